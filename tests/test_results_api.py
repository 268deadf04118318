"""bench.results.load: one tidy frame from a results directory, stable dtypes, no column dropped."""

from __future__ import annotations

import json
import warnings

import pandas as pd
import pytest

from bench import results
from bench.errors import BenchError, IntegrityError
from bench.store import ROW_COLUMNS, STORE_SCHEMA, ResultsStore
from tests.conftest import TINY_PRISM


def _rows(key, method, params, n=3, **extra):
    df = pd.DataFrame(
        {
            "cell": key,
            "dataset": "d",
            "features": "f",
            "split_seed": 0,
            "split_hash": "h",
            "shots": pd.array([None] * n, dtype="Int64"),
            "unseen_shots": pd.array([5] * n, dtype="Int64"),
            "test_fraction": float("nan"),
            "method": method,
            "params": json.dumps(params, sort_keys=True),
            "user": [f"u{i}" for i in range(n)],
            "seen": [i % 2 == 0 for i in range(n)],
            "n_support": [3] * n,
            "n_test": [4] * n,
            "n_correct": [3.0] * n,
            "accuracy": [0.75] * n,
        }
    )[ROW_COLUMNS]
    for k, v in extra.items():
        df[k] = v
    return df


def _meta(fit_s=1.5):
    return {
        "cell": {"engine": "1", "dataset_fp": "fp", "seen_ratio": 0.5, "method_version": "2", "source": "abc"},
        "provenance": {"bench": "0.1.0", "device": "cpu", "threads": 2, "worker": "h:1", "git_commit": None},
        "params_formula": {"shared": 10, "per_user": 2},
        "params_trained": None,
        "n_users": {"seen": 2, "unseen": 1},
        "n_invalid_scores": 0,
        "method_meta": {"users_not_adapted": 1},
        "finished_at": 1_800_000_000.0,
        "timing": {"fit_s": fit_s, "adapt_s": 0.25, "score_s": 0.125, "fit_shared_by": 2},
    }


@pytest.fixture
def mixed_dir(tmp_path):
    """Three cells; only the middle one (sorted by key) has `adapted`, another has `n_invalid`."""
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    store.write_cell("a" * 16, _rows("a" * 16, "bt", {"lr": 0.1, "epochs": 3}), _meta())
    store.write_cell(
        "b" * 16, _rows("b" * 16, "mrm", {"lr": 1, "k": 2, "sizes": [4, 8]}, adapted=[True, False, True]), _meta()
    )
    store.write_cell("c" * 16, _rows("c" * 16, "oracle", {}, n_invalid=[0, 1, 0]), _meta())
    return tmp_path


def test_optional_columns_survive_and_dtypes_are_stable(mixed_dir):
    # the failure this API exists for: pyarrow's dataset reader unifies on one file's schema
    naive = pd.read_parquet(mixed_dir / "cells")
    df = results.load(mixed_dir)
    assert len(df) == 9
    assert list(df.columns[: len(ROW_COLUMNS)]) == ROW_COLUMNS
    assert str(df["adapted"].dtype) == "boolean"
    assert df["adapted"].tolist()[3:6] == [True, False, True]
    assert df.loc[df["method"] != "mrm", "adapted"].isna().all()
    assert str(df["n_invalid"].dtype) == "Int64" and df["n_invalid"].sum() == 1
    for col, dtype in results.ROW_DTYPES.items():
        assert str(df[col].dtype) == dtype, col
    for col, dtype in results.META_DTYPES.items():
        assert str(df[col].dtype) == dtype, col
    assert "adapted" not in naive.columns or naive["adapted"].notna().sum() != 3  # documents why


def test_metadata_columns(mixed_dir):
    df = results.load(mixed_dir)
    row = df.iloc[0]
    assert row["fit_seconds"] == 1.5 and row["adapt_seconds"] == 0.25 and row["fit_shared_by"] == 2
    assert row["params_formula_shared"] == 10 and row["params_formula_per_user"] == 2
    assert pd.isna(row["params_trained_shared"])
    assert row["method_version"] == "2" and row["source_hash"] == "abc" and row["seen_ratio"] == 0.5
    assert row["device"] == "cpu" and row["threads"] == 2 and row["worker"] == "h:1"
    assert row["finished_at"] == pd.Timestamp(1_800_000_000, unit="s", tz="UTC")
    assert json.loads(row["method_meta"]) == {"users_not_adapted": 1}
    assert row["schema"] == STORE_SCHEMA and df.attrs["schema"] == STORE_SCHEMA
    # shots: <NA> means "all", kept as a nullable integer
    assert df["shots"].isna().all() and (df["unseen_shots"] == 5).all()


def test_params_expand_to_typed_columns(mixed_dir):
    df = results.load(mixed_dir)
    assert str(df["param.lr"].dtype) == "Float64"  # 0.1 and 1 across methods → Float64
    assert str(df["param.epochs"].dtype) == "Int64"
    assert str(df["param.sizes"].dtype) == "string"
    assert df.loc[df["method"] == "mrm", "param.sizes"].iloc[0] == "[4, 8]"
    assert df.loc[df["method"] == "oracle", "param.lr"].isna().all()
    plain = results.load(mixed_dir, expand_params=False)
    assert not [c for c in plain.columns if c.startswith("param.")]
    assert plain.groupby("params").size().shape[0] == 3  # params text is groupable


def test_accepts_the_cells_folder_and_groups(mixed_dir):
    df = results.load(mixed_dir / "cells")
    acc = df.groupby(["method", "seen"])["accuracy"].mean()
    assert acc.loc[("bt", True)] == 0.75


def test_corrupt_cell_raises_or_is_skipped_with_a_warning(mixed_dir):
    path = sorted((mixed_dir / "cells").glob("*.parquet"))[0]
    path.write_bytes(b"not parquet")
    with pytest.raises(IntegrityError):
        results.load(mixed_dir)
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        df = results.load(mixed_dir, errors="warn")
    assert len(df) == 6 and any("unreadable" in str(x.message) for x in w)


def test_not_a_results_dir_is_a_clear_error(tmp_path):
    with pytest.raises(BenchError, match="not a results directory"):
        results.load(tmp_path / "nope")


def test_empty_store_has_the_documented_columns(tmp_path):
    ResultsStore(tmp_path).ensure_writable()
    df = results.load(tmp_path)
    assert len(df) == 0
    assert set(results.ROW_DTYPES) | set(results.META_DTYPES) <= set(df.columns)


def test_newer_schema_is_refused(tmp_path, monkeypatch):
    import bench.store as store_mod

    store = ResultsStore(tmp_path)
    store.ensure_writable()
    monkeypatch.setattr(store_mod, "STORE_SCHEMA", STORE_SCHEMA + 1)
    store.write_cell("a" * 16, _rows("a" * 16, "bt", {}), _meta())
    monkeypatch.setattr(store_mod, "STORE_SCHEMA", STORE_SCHEMA)
    with pytest.raises(BenchError, match="upgrade bench"):
        results.load(tmp_path)


def test_a_real_run(tmp_path, cli):
    """bt writes no `adapted`, mrm does: the loader keeps both, one row per (cell, user)."""
    out = tmp_path / "res"
    code, _, err = cli(
        "run", "--methods", "bt,mrm", "--dataset", TINY_PRISM, "--seeds", "0", "--results", out,
        "--param", "mrm.epochs=2",
    )
    assert code == 0, err
    df = results.load(out)
    n_users = df.groupby("cell")["user"].nunique()
    assert (n_users == 40).all()
    assert set(df["method"]) == {"bt", "mrm"}
    assert str(df["adapted"].dtype) == "boolean"
    assert df.loc[df["method"] == "mrm", "adapted"].notna().all()
    assert df.loc[df["method"] == "bt", "adapted"].isna().all()
    assert (df["fit_seconds"] >= 0).all() and df["bench_version"].notna().all()
    assert df["param.epochs"].dropna().eq(2).all()


def test_docs_list_every_column():
    from pathlib import Path

    doc = (Path(__file__).resolve().parent.parent / "docs" / "results.md").read_text()
    for col in list(results.ROW_DTYPES) + list(results.META_DTYPES):
        assert f"`{col}`" in doc, col

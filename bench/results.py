"""Load a results directory as one tidy table: ``bench.results.load("results")``.

``pd.read_parquet("results/cells")`` is *not* a loader for bench results: pyarrow unifies the
files' schemas by the first file's, so a column that only some methods write (``adapted``,
``n_invalid``, a method's ``extra_rows``) is dropped silently, and the cell's metadata (timings,
parameter counts, provenance) stays in a JSON blob in each file's footer. :func:`load` reads every
cell through the store's integrity checks and returns one row per (cell, user) with

* the stored row columns (``bench.store.ROW_COLUMNS``) in their order and with fixed dtypes;
* every optional per-user column any cell has (the union; missing values are ``<NA>`` in a
  nullable dtype, so a bool column stays ``boolean`` and an integer column ``Int64``);
* cell metadata as columns (``META_COLUMNS``: method version and source hash, seen ratio, dataset
  fingerprint, timings, parameter counts, provenance);
* with ``expand_params=True`` (the default) one ``param.<name>`` column per method parameter.

The on-disk schema and what every column means are documented in ``docs/results.md``; the version
of that schema is :data:`bench.store.STORE_SCHEMA`, recorded in each cell file's metadata.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import BenchError, IntegrityError

#: dtypes of the columns every cell file has (bench.store.ROW_COLUMNS)
ROW_DTYPES: dict[str, str] = {
    "cell": "string",
    "dataset": "string",
    "features": "string",
    "split_seed": "Int64",
    "split_hash": "string",
    "shots": "Int64",  # <NA> = all of the user's train pairs
    "unseen_shots": "Int64",  # <NA> = all
    "test_fraction": "Float64",  # <NA> = every test pair scored
    "method": "string",
    "params": "string",  # canonical JSON of the resolved parameters (groupable)
    "user": "string",
    "seen": "boolean",
    "n_support": "Int64",
    "n_test": "Int64",
    "n_correct": "Float64",  # float: replicate margins credit ties by halves
    "accuracy": "Float64",  # <NA> for a user without test pairs
}

#: metadata columns, taken from each cell file's footer (same value on every row of a cell)
META_DTYPES: dict[str, str] = {
    "schema": "Int64",
    "engine": "string",
    "dataset_fp": "string",
    "seen_ratio": "Float64",
    "method_version": "string",
    "source_hash": "string",
    "params_formula_shared": "Int64",
    "params_formula_per_user": "Int64",
    "params_trained_shared": "Int64",  # <NA>: the method keeps no tensors to count
    "params_trained_per_user": "Int64",
    "n_seen_users": "Int64",
    "n_unseen_users": "Int64",
    "n_invalid_scores": "Int64",
    "fit_seconds": "Float64",
    "adapt_seconds": "Float64",
    "score_seconds": "Float64",
    "fit_shared_by": "Int64",  # cells (unseen budgets) served by one fit
    "finished_at": "datetime64[ns, UTC]",
    "bench_version": "string",
    "git_commit": "string",
    "device": "string",
    "threads": "Int64",
    "worker": "string",
    "method_meta": "string",  # JSON object: the method's own cell-level facts
    "provenance": "string",  # JSON object: the full provenance record
}
META_COLUMNS = list(META_DTYPES)


def _meta_values(meta: dict[str, Any]) -> dict[str, Any]:
    cell = meta.get("cell") or {}
    prov = meta.get("provenance") or {}
    timing = meta.get("timing") or {}
    formula = meta.get("params_formula") or {}
    trained = meta.get("params_trained") or {}
    users = meta.get("n_users") or {}
    finished = meta.get("finished_at")
    return {
        "schema": meta.get("schema", 1),
        "engine": cell.get("engine"),
        "dataset_fp": cell.get("dataset_fp"),
        "seen_ratio": cell.get("seen_ratio"),
        "method_version": cell.get("method_version"),
        "source_hash": cell.get("source"),
        "params_formula_shared": formula.get("shared"),
        "params_formula_per_user": formula.get("per_user"),
        "params_trained_shared": trained.get("shared"),
        "params_trained_per_user": trained.get("per_user"),
        "n_seen_users": users.get("seen"),
        "n_unseen_users": users.get("unseen"),
        "n_invalid_scores": meta.get("n_invalid_scores"),
        "fit_seconds": timing.get("fit_s"),
        "adapt_seconds": timing.get("adapt_s"),
        "score_seconds": timing.get("score_s"),
        "fit_shared_by": timing.get("fit_shared_by"),
        "finished_at": None if finished is None else pd.Timestamp(finished, unit="s", tz="UTC"),
        "bench_version": prov.get("bench"),
        "git_commit": prov.get("git_commit"),
        "device": prov.get("device"),
        "threads": prov.get("threads"),
        "worker": prov.get("worker"),
        "method_meta": json.dumps(meta.get("method_meta") or {}, sort_keys=True),
        "provenance": json.dumps(prov, sort_keys=True),
    }


def _nullable(series: pd.Series) -> str:
    """The nullable dtype an optional per-user column gets (bool → boolean, ints → Int64, …)."""
    s = series.dropna()
    kind = series.dtype.kind
    if kind == "b" or str(series.dtype) == "boolean":
        return "boolean"
    if kind in "iu" or str(series.dtype) == "Int64":
        return "Int64"
    if kind == "f" or str(series.dtype) == "Float64":
        return "Float64"
    if len(s) and all(isinstance(v, bool) for v in s):
        return "boolean"
    return "string" if all(isinstance(v, str) for v in s) else "object"


def _unify(dtypes: set[str]) -> str:
    if len(dtypes) == 1:
        return next(iter(dtypes))
    if dtypes <= {"Int64", "Float64"}:
        return "Float64"
    if dtypes <= {"Int64", "boolean"}:
        return "Int64"
    return "object"


def _param_dtype(values: list[Any]) -> str:
    present = [v for v in values if v is not None]
    if present and all(isinstance(v, bool) for v in present):
        return "boolean"
    if present and all(isinstance(v, int) and not isinstance(v, bool) for v in present):
        return "Int64"
    if present and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in present):
        return "Float64"
    return "string"


def _expand_params(df: pd.DataFrame) -> pd.DataFrame:
    """One ``param.<name>`` column per parameter; nested values (lists, dicts) as JSON text."""
    parsed = {p: json.loads(p) for p in df["params"].dropna().unique()}
    names = sorted({k for d in parsed.values() for k in d})
    cols = {}
    for name in names:
        per_cell = {p: d.get(name) for p, d in parsed.items()}
        dtype = _param_dtype(list(per_cell.values()))
        if dtype == "string":
            per_cell = {
                p: (None if v is None else v if isinstance(v, str) else json.dumps(v, sort_keys=True))
                for p, v in per_cell.items()
            }
        cols[f"param.{name}"] = pd.array(df["params"].map(per_cell).tolist(), dtype=dtype)
    return pd.concat([df, pd.DataFrame(cols, index=df.index)], axis=1) if cols else df


def load(
    results: str | Path = "results",
    *,
    expand_params: bool = True,
    errors: str = "raise",
) -> pd.DataFrame:
    """Every stored cell of a results directory as one DataFrame of per-user rows.

    ``results`` is the ``--results`` directory of ``bench run`` (or its ``cells/`` folder).
    ``errors="raise"`` stops at a cell file that fails its integrity check (rows or metadata
    not matching their recorded hashes, an unreadable file); ``errors="warn"`` skips it with a
    warning. Corrupt cells are never returned. Columns: ``bench.store.ROW_COLUMNS``, then every
    optional per-user column found in any cell (sorted), then ``META_COLUMNS``, then the
    ``param.*`` columns; see ``docs/results.md``. ``df.attrs["schema"]`` is the store schema
    version read.
    """
    from bench.store import ROW_COLUMNS, STORE_SCHEMA, ResultsStore

    if errors not in ("raise", "warn"):
        raise ValueError(f"errors must be 'raise' or 'warn', not {errors!r}")
    root = Path(results)
    if root.name == "cells" and not (root / "cells").is_dir():
        root = root.parent
    store = ResultsStore(root)
    if not store.cells_dir.is_dir():
        raise BenchError(
            f"{root} is not a results directory (it has no cells/ folder)",
            hint="pass the directory given to `bench run --results DIR` (default: ./results)",
        )
    frames: list[pd.DataFrame] = []
    for path in sorted(store.cells_dir.glob("*.parquet")):
        try:
            rows, meta = store.read_cell(path)
        except IntegrityError as e:
            if errors == "raise":
                raise
            warnings.warn(f"skipped: {e.message}", stacklevel=2)
            continue
        schema = int(meta.get("schema", 1))
        if schema > STORE_SCHEMA:
            raise BenchError(
                f"result file {path} has store schema {schema}; this bench reads up to {STORE_SCHEMA}",
                hint="upgrade bench (pip install -U bench-prm) to read it",
            )
        values = _meta_values(meta)
        for col in META_COLUMNS:
            rows[f"__meta__{col}"] = [values[col]] * len(rows)
        frames.append(rows)

    extra_dtypes: dict[str, set[str]] = {}
    for f in frames:
        for col in f.columns:
            if col not in ROW_COLUMNS and not col.startswith("__meta__"):
                extra_dtypes.setdefault(col, set()).add(_nullable(f[col]))
    extras = sorted(extra_dtypes)
    dtypes = {**ROW_DTYPES, **{c: _unify(extra_dtypes[c]) for c in extras}}

    typed = []
    for f in frames:
        out = {}
        for col in ROW_COLUMNS + extras:
            values = f[col] if col in f.columns else pd.Series([pd.NA] * len(f), dtype="object")
            if dtypes[col] in ("Float64", "Int64", "boolean") and values.dtype == object:
                values = values.where(values.notna(), None)
            out[col] = pd.array(values.tolist(), dtype=dtypes[col]) if dtypes[col] != "object" else values.to_numpy()
        for col in META_COLUMNS:
            v = f[f"__meta__{col}"].tolist()
            out[col] = pd.array(v, dtype=META_DTYPES[col]) if not col == "finished_at" else pd.to_datetime(v, utc=True)
        typed.append(pd.DataFrame(out))
    if typed:
        df = pd.concat(typed, ignore_index=True)
    else:
        df = pd.DataFrame({c: pd.Series(dtype=t) for c, t in {**ROW_DTYPES, **META_DTYPES}.items()})
    for col, t in {**dtypes, **META_DTYPES}.items():  # concat keeps dtypes when they agree; make sure
        if col in df.columns and str(df[col].dtype) != t and t != "object":
            df[col] = df[col].astype(t)
    if expand_params:
        df = _expand_params(df)
    df.attrs["schema"] = STORE_SCHEMA
    return df

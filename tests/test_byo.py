import json

import numpy as np
import pandas as pd
import pytest

from bench.datasets.local import load_directory
from bench.errors import DataError


def _write(d, pairs: pd.DataFrame, feats: np.ndarray | None, fmt="parquet", cfg: str | None = None):
    d.mkdir(exist_ok=True)
    if fmt == "parquet":
        pairs.to_parquet(d / "pairs.parquet")
    elif fmt == "csv":
        pairs.to_csv(d / "pairs.csv", index=False)
    else:
        with open(d / "pairs.jsonl", "w") as f:
            for rec in pairs.to_dict("records"):
                f.write(json.dumps(rec) + "\n")
    if feats is not None:
        np.save(d / "features.npy", feats)
    if cfg:
        (d / "dataset.yaml").write_text(cfg)
    return d


def _pairs(n_users=4, per_user=6):
    rows = []
    for u in range(n_users):
        for i in range(per_user):
            k = len(rows)
            rows.append({"user": f"u{u}", "pair_id": f"p{k}", "group": f"g{i // 2}", "chosen": 2 * k, "rejected": 2 * k + 1})
    return pd.DataFrame(rows)


@pytest.mark.parametrize("fmt", ["parquet", "csv", "jsonl"])
def test_load_all_formats(tmp_path, fmt):
    p = _pairs()
    f = np.random.default_rng(0).standard_normal((2 * len(p), 8)).astype(np.float16)
    ds = load_directory(_write(tmp_path / fmt, p, f, fmt))
    assert ds.summary()["users"] == 4 and ds.features.dim == 8 and ds.split_by == "group"
    assert ds.pairs["group"].nunique() == 12  # groups are namespaced by user


def test_three_dim_features_without_indices(tmp_path):
    p = _pairs().drop(columns=["chosen", "rejected"])
    f = np.random.default_rng(0).standard_normal((len(p), 2, 5)).astype(np.float32)
    ds = load_directory(_write(tmp_path / "d", p, f))
    np.testing.assert_allclose(ds.features.take(ds.pairs["chosen"].to_numpy()[:3]), f[:3, 0])
    np.testing.assert_allclose(ds.features.take(ds.pairs["rejected"].to_numpy()[:3]), f[:3, 1])


def test_source_split_column(tmp_path):
    p = _pairs().drop(columns=["group"])
    p["split"] = np.where(np.arange(len(p)) % 2 == 0, "train", "validation")
    ds = load_directory(_write(tmp_path / "d", p, np.zeros((2 * len(p), 3), np.float16)))
    assert ds.split_by == "source" and set(ds.pairs["source_split"]) == {"train", "test"}


def test_nan_features_name_the_rows(tmp_path):
    p = _pairs()
    f = np.ones((2 * len(p), 4), dtype=np.float32)
    f[5, 2] = np.nan
    f[9, 0] = np.inf
    with pytest.raises(DataError, match=r"NaN/Inf features in rows \[5, 9\].*pairs \[2, 4\]"):
        load_directory(_write(tmp_path / "d", p, f))


def test_wrong_shapes_and_dtypes(tmp_path):
    p = _pairs()
    with pytest.raises(DataError, match="out of range"):
        load_directory(_write(tmp_path / "a", p, np.zeros((10, 4), np.float16)))
    with pytest.raises(DataError, match="must be \\(rows, dim\\)"):
        load_directory(_write(tmp_path / "b", p, np.zeros((2 * len(p), 2, 4), np.float16)))
    with pytest.raises(DataError, match="not a float type"):
        load_directory(_write(tmp_path / "c", p, np.zeros((2 * len(p), 4), np.int32)))
    q = p.drop(columns=["chosen", "rejected"])
    with pytest.raises(DataError, match=r"must be \(24, 2, dim\)"):
        load_directory(_write(tmp_path / "e", q, np.zeros((24, 3, 4), np.float16)))


def test_bad_columns(tmp_path):
    p = _pairs()
    with pytest.raises(DataError, match="missing required column 'user'"):
        load_directory(_write(tmp_path / "a", p.drop(columns=["user"]), np.zeros((48, 2), np.float16)))
    bad = p.copy()
    bad["chosen"] = bad["chosen"].astype(float)
    bad.loc[3, "chosen"] = 2.5
    with pytest.raises(DataError, match="integer row numbers"):
        load_directory(_write(tmp_path / "b", bad, np.zeros((48, 2), np.float16)))
    dup = p.copy()
    dup.loc[1, "pair_id"] = dup.loc[0, "pair_id"]
    with pytest.raises(DataError, match="duplicate pair_id"):
        load_directory(_write(tmp_path / "c", dup, np.zeros((48, 2), np.float16)))
    same = p.copy()
    same.loc[0, "rejected"] = same.loc[0, "chosen"]
    with pytest.raises(DataError, match="chosen == rejected"):
        load_directory(_write(tmp_path / "d", same, np.zeros((48, 2), np.float16)))


def test_malformed_and_missing_files(tmp_path):
    d = tmp_path / "j"
    d.mkdir()
    (d / "pairs.jsonl").write_text('{"user": "a", "chosen": 0, "rejected": 1}\n{"user": "b", "chosen": 2\n')
    np.save(d / "features.npy", np.zeros((4, 2), np.float16))
    with pytest.raises(DataError, match="line 2: malformed JSON"):
        load_directory(d)
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="has no pairs table"):
        load_directory(tmp_path / "empty")
    with pytest.raises(DataError, match="directory not found"):
        load_directory(tmp_path / "nowhere")
    t = _write(tmp_path / "t", _pairs(), np.zeros((48, 2), np.float16))
    data = (t / "features.npy").read_bytes()
    (t / "features.npy").write_bytes(data[:60])
    with pytest.raises(DataError, match="truncated"):
        load_directory(t)


def test_text_columns_and_list_content_rejected(tmp_path):
    p = _pairs(2, 2)
    p["prompt"] = ["hi"] * 4
    p["chosen_text"] = [f"c{i}" for i in range(4)]
    p["rejected_text"] = [f"r{i}" for i in range(4)]
    ds = load_directory(_write(tmp_path / "a", p, np.zeros((8, 2), np.float16)))
    assert "text" in ds.capabilities
    assert ds.messages(0) == [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "c0"}]
    q = p.copy()
    q["prompt"] = [json.dumps([{"role": "user", "content": ["a", "list"]}])] * 4
    with pytest.raises(DataError, match="content is list, not str"):
        load_directory(_write(tmp_path / "b", q, np.zeros((8, 2), np.float16)))


def test_byo_runs_end_to_end(tmp_path, cli):
    rng = np.random.default_rng(1)
    p = _pairs(6, 10)
    p["rm_chosen"] = rng.standard_normal(len(p))
    p["rm_rejected"] = rng.standard_normal(len(p))
    d = _write(tmp_path / "mine", p, rng.standard_normal((2 * len(p), 6)).astype(np.float16), cfg="name: mine\nfamily: prism\n")
    code, out, err = cli("run", "--methods", "bt,rm", "--dataset", d, "--repeats", "2", "--results", tmp_path / "r",
                         "--param", "bt.iterations=20")
    assert code == 0, err
    assert "mine" in out

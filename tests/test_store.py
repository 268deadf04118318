import pandas as pd
import pytest

from bench.errors import IntegrityError
from bench.store import ROW_COLUMNS, ResultsStore


def _rows(key="k1"):
    return pd.DataFrame(
        {
            "cell": key,
            "dataset": "d",
            "features": "f",
            "split_seed": 0,
            "split_hash": "h",
            "shots": pd.array([None, None], dtype="Int64"),
            "unseen_shots": pd.array([5, 5], dtype="Int64"),
            "test_fraction": float("nan"),
            "method": "m",
            "params": "{}",
            "user": ["a", "b"],
            "seen": [True, False],
            "n_support": [3, 2],
            "n_test": [4, 4],
            "n_correct": [3.0, 2.0],
            "accuracy": [0.75, 0.5],
        }
    )[ROW_COLUMNS]


def test_roundtrip_and_hash(tmp_path):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    store.write_cell("k1", _rows(), {"cell": {"x": 1}})
    rows, meta = store.read_cell(store.cell_path("k1"))
    assert rows["accuracy"].tolist() == [0.75, 0.5]
    assert meta["cell"] == {"x": 1} and meta["key"] == "k1"
    assert store.status("k1").state == "done"
    assert not list(store.cells_dir.glob("*.tmp"))


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_cells_are_detected(tmp_path, damage):
    store = ResultsStore(tmp_path)
    store.ensure_writable()
    path = store.write_cell("k1", _rows(), {})
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not parquet at all")
    else:
        # rewrite the rows with a changed accuracy but the old metadata (old hash)
        import pyarrow as pa
        import pyarrow.parquet as pq

        t = pq.read_table(path)
        df = t.to_pandas()
        df.loc[0, "accuracy"] = 0.99
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(t.schema.metadata), path)
    assert store.status("k1").state == "corrupt"
    with pytest.raises(IntegrityError):
        store.read_cell(path)
    rows, metas, problems = store.load(quarantine_bad=True)
    assert len(rows) == 0 and len(problems) == 1
    assert not path.exists() and list((tmp_path / "quarantine").iterdir())


def test_unwritable_results_dir_fails_before_work(tmp_path):
    from bench.errors import BenchError

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(BenchError, match="cannot write results"):
        ResultsStore(blocker / "results").ensure_writable()

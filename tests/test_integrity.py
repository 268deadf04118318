"""Integrity: every stored artifact carries a content hash verified on read. For each kind — result
cells, split files, feature chunks and the assembled feature cache (arrays, index, head,
manifest), the generated synthetic dataset, the LLM response cache, the movielens item-feature
cache — a flipped byte or a truncation is reported with the file and the fix, never used."""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bench.errors import DataError, IntegrityError
from tests.conftest import TINY_PRISM
from tests.test_storage_errors import FakeEncoder, flat

RUN = ["run", "--methods", "oracle,rm", "--dataset", TINY_PRISM, "--seeds", "0-1", "--no-table"]


def flip(path: Path, pos: int | None = None, seed: int = 0) -> int:
    data = bytearray(path.read_bytes())
    pos = random.Random(seed).randrange(len(data)) if pos is None else pos
    data[pos] ^= 0x5A
    path.write_bytes(bytes(data))
    return pos


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


# ---------------------------------------------------------------------------- result cells


@pytest.fixture
def results(cli, tmp_path):
    res = tmp_path / "res"
    assert cli(*RUN, "--results", res)[0] == 0
    return res


def test_cell_flipped_bytes_are_caught_or_harmless(results):
    """Any single flipped byte either fails verification or changes nothing that is read."""
    from bench.store import ResultsStore

    store = ResultsStore(results)
    path = sorted(store.cells_dir.glob("*.parquet"))[0]
    good = path.read_bytes()
    rows, meta = store.read_cell(path)
    rng = random.Random(1)
    caught = harmless = 0
    for pos in rng.sample(range(len(good)), 150):
        flip(path, pos)
        try:
            r2, m2 = store.read_cell(path)
        except IntegrityError as e:
            assert str(path) in e.message and "rerun the same `bench run`" in e.hint
            caught += 1
        else:
            assert r2.equals(rows) and m2 == meta, f"byte {pos}: a flipped byte changed what is read"
            harmless += 1
        path.write_bytes(good)
    assert caught > 100, (caught, harmless)


def test_cell_metadata_edit_is_caught(results):
    """Rows intact, metadata edited (e.g. a SynthesizeMe persona or a provenance field)."""
    import pyarrow.parquet as pq

    from bench.store import META_KEY, ResultsStore

    store = ResultsStore(results)
    path = sorted(store.cells_dir.glob("*.parquet"))[0]
    table = pq.read_table(path)
    meta = json.loads(table.schema.metadata[META_KEY])
    meta["method_meta"] = {"persona": "edited"}
    pq.write_table(table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()}), path)
    with pytest.raises(IntegrityError, match="metadata does not match its recorded hash") as e:
        store.read_cell(path)
    assert str(path) in e.value.message


def test_corrupt_cells_are_reported_then_recomputed(cli, results):
    from bench.store import ResultsStore

    cells = sorted((results / "cells").glob("*.parquet"))
    good = cells[0].read_bytes()
    for pos in range(len(good) // 2, len(good)):  # the first flip that matters (some bytes are never read)
        flip(cells[0], pos)
        try:
            ResultsStore(results).read_cell(cells[0])
        except IntegrityError:
            break
        cells[0].write_bytes(good)
    truncate(cells[1])
    code, out, _ = cli("report", "--results", results)
    assert code == 0 and flat(out).count("leftout") == 2 and str(cells[0].name) in flat(out)
    code, out, _ = cli(*RUN, "--results", results)
    assert code == 0 and "2 to run" in out and out.count("quarantine") == 2
    assert len(list((results / "quarantine").glob("*.reason.txt"))) == 2


# ---------------------------------------------------------------------------- split files


def _split_file(results: Path) -> Path:
    return sorted((results / "splits").rglob("*.parquet"))[0]


def test_split_file_any_row_edit_is_caught(cli, results):
    """Even a change the split hash does not cover (a later row's 'seen' for its user) is caught."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = _split_file(results)
    table = pq.read_table(path)
    df = table.to_pandas()
    user = df["user"].iloc[0]
    j = int(np.flatnonzero(df["user"].to_numpy() == user)[-1])  # the user's last row, not its first
    df.loc[j, "seen"] = not bool(df.loc[j, "seen"])
    pq.write_table(pa.Table.from_pandas(df, preserve_index=False).replace_schema_metadata(table.schema.metadata), path)
    code, out, err = cli(*RUN, "--results", results)
    assert code == 2 and "Traceback" not in out + err
    assert "content hash" in err and flat(str(path)) in flat(err) and "delete" in err


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_split_file_damage_is_caught(results, damage):
    from bench.splits import read_split_hash

    path = _split_file(results)
    if damage == "flip":
        flip(path, len(path.read_bytes()) // 3)
    else:
        truncate(path)
    with pytest.raises(IntegrityError) as e:
        read_split_hash(path)
    assert str(path) in e.value.message and "delete" in e.value.hint


# ---------------------------------------------------------------------------- feature cache


@pytest.fixture
def tldr_ds(tmp_path, monkeypatch):
    from bench.commands.embed import load_text_dataset
    from tests.realdata import write_reddit_raw

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    d, _ = write_reddit_raw(tmp_path / "tldr")
    return load_text_dataset(f"reddit:data_dir={d}")


def _extract(ds, **kw):
    from bench.features.extract import extract_features

    logs = []
    extract_features(ds, FakeEncoder(), chunk_size=2, check_samples=0, log=logs.append, **kw)
    return logs


def _open(ds):
    from bench.features.cache import open_cached_features

    return open_cached_features(ds, "fake-rm", spec="reddit")


def test_chunk_damage_is_detected_and_recomputed(tldr_ds):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from bench.features.cache import model_dir

    def stop(done, total):
        if done >= 4:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _extract(tldr_ds, progress=stop)
    part = model_dir(tldr_ds, FakeEncoder().identity) / "partial-response"
    # chunk 0: a logit edited in its index (the .npy untouched); chunk 1: its .npy flipped
    idx = part / "chunk-00000.parquet"
    t = pq.read_table(idx)
    logits = t.column("logit").to_numpy().copy()
    logits[0] += 1.0
    pq.write_table(t.set_column(t.schema.get_field_index("logit"), "logit", pa.array(logits)).replace_schema_metadata(t.schema.metadata), idx)
    flip(part / "chunk-00001.npy", len((part / "chunk-00001.npy").read_bytes()) - 3)
    logs = _extract(tldr_ds)
    text = "\n".join(logs)
    assert "chunk 0" in text and "index altered" in text and "chunk 1" in text and "digest mismatch" in text


@pytest.mark.parametrize(
    "name,damage",
    [("features.npy", "flip"), ("features.npy", "truncate"), ("index.parquet", "flip"), ("index.parquet", "truncate"),
     ("head.npy", "flip"), ("manifest.json", "edit"), ("manifest.json", "truncate")],
)
def test_feature_cache_damage_is_refused(tldr_ds, name, damage):
    from bench.features.cache import model_dir

    _extract(tldr_ds)
    root = model_dir(tldr_ds, FakeEncoder().identity)
    path = root / name
    if damage == "flip":
        flip(path, len(path.read_bytes()) - 5)  # in the data, past any header
    elif damage == "truncate":
        truncate(path)
    else:
        man = json.loads(path.read_text())
        man["dim"] += 1  # an edit that no other check would notice
        path.write_text(json.dumps(man))
    with pytest.raises(DataError) as e:
        _open(tldr_ds)
    assert flat(str(root)) in flat(e.value.message + e.value.hint) and "bench embed" in e.value.hint


# ---------------------------------------------------------------------------- synthetic dataset cache


@pytest.mark.parametrize("name,damage", [("pairs.parquet", "flip"), ("features.npy", "flip"), ("responses.parquet", "truncate"), ("meta.json", "edit")])
def test_synthetic_cache_damage_is_refused(tmp_path, monkeypatch, name, damage):
    from bench.datasets import _CACHE, load_dataset

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    _CACHE.clear()
    spec = "synthetic-prism:dim=32,users=12"
    load_dataset(spec)
    directory = next((tmp_path / "cache" / "datasets").iterdir())
    path = directory / name
    if damage == "flip":
        flip(path, len(path.read_bytes()) - 9)
    elif damage == "truncate":
        truncate(path)
    else:
        meta = json.loads(path.read_text())
        meta["bayes_accuracy"] = 0.99
        path.write_text(json.dumps(meta, indent=1))
    _CACHE.clear()
    with pytest.raises(DataError) as e:
        load_dataset(spec)
    assert flat(str(directory)) in flat(e.value.message + e.value.hint) and "delete" in e.value.hint
    _CACHE.clear()


# ---------------------------------------------------------------------------- LLM response cache


def _llm_cache(tmp_path):
    from bench.llm.base import ChatRequest, Completion
    from bench.llm.cache import ResponseCache, cache_key, request_json

    c = ResponseCache(tmp_path / "llm.sqlite")
    reqs = [ChatRequest.make([{"role": "user", "content": f"q{i}"}]) for i in range(3)]
    keys = [cache_key("m", r) for r in reqs]
    c.put_many([(k, "m", request_json("m", r), Completion(f"answer {i}", 3, 2, 0.1, "stop")) for i, (k, r) in enumerate(zip(keys, reqs))])
    return c, keys


def test_llm_cache_edited_answer_is_refused(tmp_path):
    c, keys = _llm_cache(tmp_path)
    assert c.get_many(keys)[keys[1]].text == "answer 1"
    c.close()
    with sqlite3.connect(tmp_path / "llm.sqlite") as db:
        db.execute("UPDATE responses SET text = 'answer X' WHERE key = ?", (keys[1],))
    from bench.llm.cache import ResponseCache

    c = ResponseCache(tmp_path / "llm.sqlite")
    with pytest.raises(IntegrityError) as e:
        c.get_many(keys)
    assert str(tmp_path / "llm.sqlite") in e.value.message and keys[1] in e.value.message and "delete" in e.value.hint


def test_llm_cache_damaged_file_is_refused(tmp_path):
    c, keys = _llm_cache(tmp_path)
    c.close()
    path = tmp_path / "llm.sqlite"
    for extra in ("-wal", "-shm"):
        Path(str(path) + extra).unlink(missing_ok=True)
    data = bytearray(path.read_bytes())
    data[:16] = b"not a database!!"
    path.write_bytes(bytes(data))
    from bench.llm.cache import ResponseCache

    with pytest.raises(IntegrityError) as e:
        ResponseCache(path).get_many(keys)
    assert str(path) in e.value.message and "delete" in e.value.hint


def test_llm_cache_without_checksums_is_migrated(tmp_path):
    """A cache written before rows carried checksums is upgraded in place and still served."""
    path = tmp_path / "old.sqlite"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE responses (key TEXT PRIMARY KEY, model TEXT NOT NULL, request TEXT NOT NULL, text TEXT NOT NULL, "
                   "prompt_tokens INTEGER NOT NULL, completion_tokens INTEGER NOT NULL, finish_reason TEXT NOT NULL, seconds REAL NOT NULL, "
                   "seed_used INTEGER, created REAL NOT NULL)")
        from bench.llm.base import ChatRequest
        from bench.llm.cache import cache_key, request_json

        r = ChatRequest.make([{"role": "user", "content": "old"}])
        db.execute("INSERT INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)", (cache_key("m", r), "m", request_json("m", r), "kept", 1, 1, "stop", 0.1, None, 0.0))
    from bench.llm.cache import ResponseCache

    got = ResponseCache(path).get_many([cache_key("m", r)])
    assert got[cache_key("m", r)].text == "kept"


# ---------------------------------------------------------------------------- movielens item features


def test_movielens_feature_cache_digest(tmp_path, monkeypatch):
    from bench.datasets import rdata
    from bench.hashing import array_digest, hash_obj

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    texts = ["Toy Story (1995)", "Heat (1995)"]
    arr = np.random.default_rng(0).standard_normal((2, 384)).astype(np.float32)
    path = rdata._cache_root() / "movielens" / f"minilm-{hash_obj({'model': rdata.MINILM, 'texts': texts}, size=10)}.npy"
    path.parent.mkdir(parents=True)
    np.save(path, arr)
    path.with_suffix(".digest").write_text(array_digest(arr) + "\n")
    assert np.array_equal(rdata._minilm_features(texts), arr)  # served from the cache, no model needed
    arr[1, 7] += 1.0
    np.save(path, arr)
    with pytest.raises(DataError) as e:
        rdata._minilm_features(texts)
    assert str(path) in e.value.message and "delete" in e.value.hint


def test_every_cached_artifact_kind_is_covered():
    """Keep this list in step with docs/reliability.md ("Crashes, full disks and integrity")."""
    covered = {"result cell", "split file", "feature chunk", "feature arrays + index + head", "feature manifest",
               "synthetic dataset cache", "text-prefs dataset cache", "LLM response cache", "movielens item features"}
    doc = Path(__file__).resolve().parent.parent / "docs" / "reliability.md"
    if not doc.exists():
        pytest.skip("docs/reliability.md not written yet")
    text = doc.read_text()
    missing = [k for k in covered if k not in text]
    assert not missing, missing

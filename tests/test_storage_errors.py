"""Disk full and read-only directories, simulated: a clear message naming the directory and the
fix, exit code 2, no traceback through the CLI, finished work intact, and nothing half-written
that a rerun would trust (the rerun then finishes the job)."""

from __future__ import annotations

import errno
import os
import pickle
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from bench.errors import BenchError, StorageError
from tests.conftest import TINY_PRISM

RUN = ["run", "--methods", "oracle,rm", "--dataset", TINY_PRISM, "--seeds", "0-2", "--no-table"]  # 6 cells, no torch


def flat(text: str) -> str:
    """Rich wraps long lines: compare without any whitespace."""
    return "".join(text.split())


def _fail_cell_writes(monkeypatch, n_ok: int, code: int, how: str = "write"):
    """Let ``n_ok`` result cells be written, then fail: half a temporary file and ENOSPC ("write"),
    or a complete temporary file whose rename fails ("rename", e.g. EROFS)."""
    import pyarrow.parquet as pq

    import bench.store as store

    count = {"n": 0}
    real_write, real_replace = pq.write_table, os.replace

    def write_table(table, where, *a, **k):
        if isinstance(where, (str, os.PathLike)) and Path(where).parent.name == "cells" and how == "write":
            count["n"] += 1
            if count["n"] > n_ok:
                real_write(table, where, *a, **k)
                data = Path(where).read_bytes()
                Path(where).write_bytes(data[: len(data) // 2])
                raise OSError(code, os.strerror(code), str(where))
        return real_write(table, where, *a, **k)

    def replace(src, dst):
        if Path(dst).parent.name == "cells" and how == "rename":
            count["n"] += 1
            if count["n"] > n_ok:
                raise OSError(code, os.strerror(code), str(src), None, str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(pq, "write_table", write_table)
    monkeypatch.setattr(store.os, "replace", replace)


def _check_intact_then_resume(cli, res: Path, n_ok: int, monkeypatch, tmp_path):
    from bench.store import ResultsStore

    cells = res / "cells"
    files = sorted(cells.iterdir())
    assert [p.name for p in files if not p.name.endswith(".parquet")] == []  # no temporary file, no failure record
    store = ResultsStore(res)
    assert len(files) == n_ok
    for p in files:
        store.read_cell(p)  # every file there verifies
    monkeypatch.undo()
    code, out, err = cli(*RUN, "--results", res)
    assert code == 0, err
    assert f"{n_ok} cached, {6 - n_ok} to run" in out
    ref = tmp_path / "ref"
    assert cli(*RUN, "--results", ref)[0] == 0
    assert cli("report", "--results", ref, "--latex", tmp_path / "a.tex")[0] == 0
    assert cli("report", "--results", res, "--latex", tmp_path / "b.tex")[0] == 0
    body = lambda p: [ln for ln in p.read_text().splitlines() if not ln.startswith("%")]  # noqa: E731
    assert body(tmp_path / "a.tex") == body(tmp_path / "b.tex")


def test_disk_full_mid_run_stops_cleanly_and_resumes(cli, tmp_path, monkeypatch):
    res = tmp_path / "res"
    _fail_cell_writes(monkeypatch, 2, errno.ENOSPC)
    code, out, err = cli(*RUN, "--results", res)
    assert code == 2
    assert "Traceback" not in out + err
    assert "nospaceleft" in flat(err) and flat(str(res / "cells")) in flat(err)
    assert "free space" in err and "--results" in err and "rerunthesamecommand" in flat(err)
    assert "failed" not in out  # not blamed on the method
    _check_intact_then_resume(cli, res, 2, monkeypatch, tmp_path)


def test_read_only_results_mid_run_stops_cleanly_and_resumes(cli, tmp_path, monkeypatch):
    res = tmp_path / "res"
    _fail_cell_writes(monkeypatch, 3, errno.EROFS, how="rename")
    code, out, err = cli(*RUN, "--results", res)
    assert code == 2 and "Traceback" not in out + err
    assert "read-onlyfilesystem" in flat(err) and flat(str(res / "cells")) in flat(err) and "remount" in err
    _check_intact_then_resume(cli, res, 3, monkeypatch, tmp_path)


def test_unwritable_results_dir_fails_before_any_work_simulated(cli, tmp_path, monkeypatch):
    res = tmp_path / "res"
    assert cli(*RUN, "--results", res, "--seeds", "0")[0] == 0
    before = {p.name: p.read_bytes() for p in (res / "cells").iterdir()}
    real = Path.write_bytes

    def write_bytes(self, data):
        if self.name.startswith(".probe."):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(self))
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_bytes)
    code, out, err = cli(*RUN, "--results", res)
    assert code == 2 and "Traceback" not in out + err
    assert "permissiondenied" in flat(err) and flat(str(res)) in flat(err) and "chmod" in err
    assert {p.name: p.read_bytes() for p in (res / "cells").iterdir()} == before


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions (the simulated test covers this)")
def test_read_only_results_dir_chmod(cli, tmp_path):
    res = tmp_path / "res"
    assert cli(*RUN, "--results", res, "--seeds", "0")[0] == 0
    before = {p.name: p.read_bytes() for p in (res / "cells").iterdir()}
    os.chmod(res / "cells", 0o555)
    try:
        code, out, err = cli(*RUN, "--results", res)
    finally:
        os.chmod(res / "cells", 0o755)
    assert code == 2 and "Traceback" not in out + err and "permissiondenied" in flat(err) and "chmod" in err
    assert {p.name: p.read_bytes() for p in (res / "cells").iterdir()} == before


def test_a_worker_storage_error_stops_the_driver():
    """--jobs N / Ray: a worker reports the error as a fatal crash; the driver raises it, not retries."""
    from bench.executors import Crash, Executor, Unit
    from bench.runner import RunSummary, _drive

    e = StorageError("no space left to write result cell k in /r/cells", hint="free space; rerun")
    again = pickle.loads(pickle.dumps(e))  # BenchErrors cross process boundaries with their hint
    assert isinstance(again, StorageError) and again.hint == e.hint
    crash = pickle.loads(pickle.dumps(Crash.of(e)))

    class Dead(Executor):
        def run(self, units, on_start=None):
            for u in units:
                yield u, crash

    u = Unit("d", "/r", 0, 0.5, None, None, "oracle", "x:Y", {}, [("k", {}, None)])
    with pytest.raises(StorageError, match="no space left") as got:
        _drive([u], Dead(), RunSummary(), None, lambda m: None, 1, retries=3, poll_s=0.01)
    assert got.value.hint == "free space; rerun"


# ---------------------------------------------------------------------------- the feature cache


class FakeEncoder:
    """A deterministic stand-in encoder (no torch): features from the token ids, logit = head · f16(f)."""

    backend, dtype_name, dim = "fake", "float32", 8

    def __init__(self):
        from bench.features.cache import ModelIdentity

        self.identity = ModelIdentity("fake-rm", "r1", "t1")

    def tokenize(self, messages):
        text = " ".join(m["content"] for m in messages)
        return [ord(c) % 97 + 1 for c in text][:64] or [1]

    def head(self):
        return np.linspace(-1, 1, self.dim).astype(np.float32)

    def embed_batch(self, batch):
        f = np.stack([np.cos(np.arange(self.dim) * (sum(ids) % 13 + 1) + len(ids)) for ids in batch]).astype(np.float16).astype(np.float32)
        return f, f @ self.head()

    def embed_official(self, ids):
        f, lg = self.embed_batch([ids])
        return f[0], lg[0]

    def close(self):
        pass


@pytest.fixture
def tldr(tmp_path, monkeypatch):
    from tests.realdata import write_reddit_raw

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    d, _ = write_reddit_raw(tmp_path / "tldr")
    return d


def test_embed_disk_full_keeps_chunks_and_resumes(cli, tldr, tmp_path, monkeypatch):
    import bench.features.cache as cache
    import bench.features.encoders as encoders
    from bench.commands.embed import load_text_dataset
    from bench.features.cache import model_dir

    monkeypatch.setattr(encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    args = ["embed", "--dataset", f"reddit:data_dir={tldr}", "--model", "fake", "--device", "cpu", "--chunk", "2", "--check-samples", "0"]
    real = cache._save_npy
    count = {"n": 0}

    def save(path, arr):
        count["n"] += 1
        if count["n"] == 3:
            real(path, arr)
            Path(path).write_bytes(Path(path).read_bytes()[:40])
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, arr)

    monkeypatch.setattr(cache, "_save_npy", save)
    code, out, err = cli(*args)
    root = model_dir(load_text_dataset(f"reddit:data_dir={tldr}"), FakeEncoder().identity)
    err = out + err  # (printed while rich's progress display holds stderr)
    assert code == 2 and "Traceback" not in err
    assert "nospaceleft" in flat(err) and flat(str(root)) in flat(err) and "BENCH_CACHE" in err and "resume" in err
    part = root / "partial-response"
    assert sorted(p.name for p in part.glob("chunk-*")) == ["chunk-00000.npy", "chunk-00000.parquet", "chunk-00001.npy", "chunk-00001.parquet"]
    assert not list(part.glob(".*")) and not (root / "manifest.json").exists()
    monkeypatch.setattr(cache, "_save_npy", real)
    code, out, err = cli(*args)
    assert code == 0, err
    assert "resuming: 2 of" in out
    feats = np.load(root / "features.npy")
    # the same arrays as one uninterrupted extraction into another cache
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "other"))
    assert cli(*args)[0] == 0
    other = model_dir(load_text_dataset(f"reddit:data_dir={tldr}"), FakeEncoder().identity)
    assert np.array_equal(feats, np.load(other / "features.npy"))


def test_embed_read_only_cache(cli, tldr, monkeypatch):
    import bench.features.encoders as encoders

    monkeypatch.setattr(encoders, "load_encoder", lambda *a, **k: FakeEncoder())
    real = Path.mkdir

    def mkdir(self, *a, **k):
        if "features" in self.parts:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "mkdir", mkdir)
    code, out, err = cli("embed", "--dataset", f"reddit:data_dir={tldr}", "--model", "fake", "--device", "cpu", "--check-samples", "0")
    text = out + err  # (printed while rich's progress display holds stderr)
    assert code == 2 and "Traceback" not in text and "read-onlyfilesystem" in flat(text) and "BENCH_CACHE" in text


# ---------------------------------------------------------------------------- other caches


def test_synthetic_generation_into_a_full_disk(cli, tmp_path, monkeypatch):
    import bench.datasets.synthetic as synthetic
    from bench.datasets import _CACHE

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    _CACHE.clear()
    real = synthetic.generate

    def generate(p, out_dir):
        Path(out_dir).mkdir(parents=True)
        (Path(out_dir) / "pairs.parquet").write_bytes(b"PAR1 half")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(Path(out_dir) / "features.npy"))

    monkeypatch.setattr(synthetic, "generate", generate)
    spec = "synthetic-prism:dim=32,users=12"
    code, out, err = cli("run", "--methods", "oracle", "--dataset", spec, "--repeats", "1", "--results", tmp_path / "r")
    assert code == 2 and "Traceback" not in out + err
    datasets = tmp_path / "cache" / "datasets"
    assert "nospaceleft" in flat(err) and flat(str(datasets)) in flat(err) and "BENCH_CACHE" in err
    assert list(datasets.iterdir()) == []  # no half dataset, no temporary directory
    monkeypatch.setattr(synthetic, "generate", real)
    _CACHE.clear()
    assert cli("run", "--methods", "oracle", "--dataset", spec, "--repeats", "1", "--results", tmp_path / "r")[0] == 0


def test_stale_generation_directories_are_removed(tmp_path):
    import time

    from bench.datasets.synthetic import remove_stale_generations

    target = tmp_path / "synthetic-prism-abc"
    dead = tmp_path / ".synthetic-prism-abc.999999999.ab12cd.tmp"  # no such pid
    live = tmp_path / f".synthetic-prism-abc.{os.getpid()}.ab12cd.tmp"
    young = tmp_path / ".synthetic-prism-abc.999999998.ef34gh.tmp"
    for d in (dead, live, young):
        d.mkdir()
    old = time.time() - 7200
    os.utime(dead, (old, old))
    os.utime(live, (old, old))
    assert remove_stale_generations(target) == 1
    assert not dead.exists() and live.exists() and young.exists()


class _Failing:
    """A sqlite3 connection whose writes fail with ``message`` (SQLite's own wording)."""

    def __init__(self, conn, message):
        self.conn, self.message = conn, message

    def executemany(self, *a):
        raise sqlite3.OperationalError(self.message)

    def __getattr__(self, name):
        return getattr(self.conn, name)


@pytest.mark.parametrize("message,expect", [("database or disk is full", "no space left"), ("attempt to write a readonly database", "read-only")])
def test_llm_cache_full_or_read_only(tmp_path, message, expect):
    from bench.llm.base import ChatRequest, Completion
    from bench.llm.cache import ResponseCache, cache_key, request_json

    c = ResponseCache(tmp_path / "llm.sqlite")
    c._conn = _Failing(c._conn, message)
    req = ChatRequest.make([{"role": "user", "content": "hi"}])
    with pytest.raises(StorageError) as e:
        c.put_many([(cache_key("m", req), "m", request_json("m", req), Completion("ok", 1, 1, 0.1, "stop"))])
    assert expect in e.value.message and str(tmp_path) in e.value.message and "BENCH_CACHE" in e.value.hint


def test_cli_turns_an_unwrapped_write_error_into_a_message(cli, tmp_path, monkeypatch):
    res = tmp_path / "res"
    assert cli(*RUN, "--results", res, "--seeds", "0")[0] == 0
    real = Path.write_text

    def write_text(self, *a, **k):
        if self.suffix == ".tex":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real(self, *a, **k)

    monkeypatch.setattr(Path, "write_text", write_text)
    code, out, err = cli("report", "--results", res, "--latex", tmp_path / "t.tex")
    assert code == 2 and "Traceback" not in out + err and "nospaceleft" in flat(err) and "t.tex" in err


def test_storage_error_is_a_bench_error():
    assert issubclass(StorageError, BenchError)

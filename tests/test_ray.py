"""The Ray executor on a local Ray instance (CPU): same rows as the sequential path, crashed
workers retried, LLM requests shared by a pool of engine actors. Skipped when Ray is absent."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("ray")

from bench.runner import RunConfig, run  # noqa: E402
from bench.store import ResultsStore  # noqa: E402
from tests.conftest import TINY_PRISM  # noqa: E402
from tests.plugins.fake_methods import register_fakes  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def ray_ex():
    from bench.executors import RayExecutor

    ex = RayExecutor(jobs=2)
    yield ex
    ex.close()


@pytest.fixture
def fakes(monkeypatch):
    from bench import registry

    monkeypatch.setattr(registry, "_group", registry._group)
    register_fakes()


def _rows(results):
    rows, metas, problems = ResultsStore(results).load()
    assert not problems
    return rows.sort_values(["cell", "user"]).reset_index(drop=True), metas


def test_ray_tasks_store_the_rows_of_the_sequential_path(tmp_path, ray_ex):
    def cfg(results, **kw):
        return RunConfig(methods=["bt", "oracle"], dataset=TINY_PRISM, seeds=[0, 1, 2], results=results,
                         unseen_shots=[2, 5], params={"bt": {"iterations": 30}}, **kw)

    seq = run(cfg(tmp_path / "seq", threads=1), log=lambda m: None)
    par = run(cfg(tmp_path / "ray"), log=lambda m: None, executor=ray_ex)
    assert (seq.ran, par.ran, par.failed) == (12, 12, [])
    a, _ = _rows(tmp_path / "seq")
    b, metas = _rows(tmp_path / "ray")
    assert a.equals(b)
    assert {m["provenance"]["executor"] for m in metas} == {"ray"}
    assert {m["provenance"]["threads"] for m in metas} <= {1, None}


def test_ray_worker_killed_mid_cell_is_failed_then_completed(tmp_path, ray_ex, fakes):
    cfg = RunConfig(methods=["suicide"], dataset=TINY_PRISM, seeds=[0], results=tmp_path / "r", unseen_shots=[2, 5],
                    params={"suicide": {"marker": str(tmp_path / "marker")}})
    s = run(cfg, log=lambda m: None, executor=ray_ex, retries=0)
    store = ResultsStore(tmp_path / "r")
    first, second = s.keys
    assert store.status(first).state == "done" and store.status(second).state == "failed"
    assert not store.cell_path(second).exists() and not list(store.cells_dir.glob(".*.tmp"))
    assert "Ray task failed" in json.loads(store.failure_path(second).read_text())["error"]
    again = run(cfg, log=lambda m: None, executor=ray_ex)
    assert (again.ran, again.cached, again.failed) == (1, 1, [])

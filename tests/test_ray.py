"""The Ray executor on a local Ray instance (CPU): same rows as the sequential path, crashed
workers retried, LLM requests shared by a pool of engine actors. Skipped when Ray is absent."""

from __future__ import annotations

import json

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


def test_deterministic_is_set_in_the_ray_task_and_recorded(tmp_path, ray_ex, fakes):
    import os

    cfg = RunConfig(methods=["probe"], dataset=TINY_PRISM, seeds=[0], results=tmp_path / "r", deterministic=True)
    s = run(cfg, log=lambda m: None, executor=ray_ex)
    assert (s.ran, s.failed) == (1, [])
    (meta,) = ResultsStore(tmp_path / "r").load()[1]
    seen = meta["method_meta"]
    assert seen["pid"] != os.getpid() and seen["torch_deterministic"] is True and seen["cublas_workspace"] == ":4096:8"
    assert seen["cudnn_benchmark"] is False
    assert meta["provenance"]["executor"] == "ray" and meta["provenance"]["deterministic"] is True


def test_a_pool_of_engine_replicas_answers_like_one_engine(tmp_path, ray_ex):
    from bench.llm import ChatRequest, SamplingParams, make_engine

    reqs = [ChatRequest.make([{"role": "user", "content": f"Which is better, {i}?"}], SamplingParams(seed=i % 3)) for i in range(23)]
    one = make_engine("scripted", "hash", cache=tmp_path / "one.sqlite")
    pool = make_engine("scripted", "hash", cache=tmp_path / "pool.sqlite", replicas=2)
    assert pool.model_id == one.model_id  # same cache keys: pooled and single runs share answers
    a, b = one.generate(reqs), pool.generate(reqs)
    assert [c.text for c in a] == [c.text for c in b]
    assert pool.stats.unique == 23 and pool.stats.failures == 0
    real = pool.backend._real
    assert len(set(real.pids())) == 2  # two actor processes served the batch
    assert len(pool.cache) == 23
    again = pool.generate(reqs)  # the cache answers; the replicas are not asked again
    assert all(c.cached for c in again)
    real.close()


def test_synthesizeme_with_engine_replicas_stores_the_rows_of_a_local_run(tmp_path, ray_ex):
    ds = "text-prefs:users=6,pairs=8,features=none"
    params = {"synthesizeme": {"backend": "scripted", "model": "hash", "cache": False, "num_candidates": 2}}

    def cfg(results, **kw):
        return RunConfig(methods=["synthesizeme"], dataset=ds, seeds=[0, 1], results=results, params=params, **kw)

    local = run(cfg(tmp_path / "local"), log=lambda m: None)
    pooled = run(cfg(tmp_path / "ray", options={"llm_replicas": 2}), log=lambda m: None, executor=ray_ex)
    assert (local.ran, pooled.ran, pooled.failed) == (2, 2, [])
    a, _ = _rows(tmp_path / "local")
    b, metas = _rows(tmp_path / "ray")
    timing = [c for c in a.columns if c.endswith("_seconds")]  # measured per request: the one column that may differ
    assert timing == ["llm_seconds"]
    assert a.drop(columns=timing).equals(b.drop(columns=timing))
    assert all(m["method_meta"]["engine"].get("replicas") == 2 for m in metas)

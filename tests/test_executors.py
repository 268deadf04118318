"""Parallel cells: local worker processes, claims, crashed workers and concurrent runs.

Every parallel path must store exactly the rows of the sequential path, compute each cell once,
and leave no partial cell behind when a worker dies.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bench.claims import ClaimDir, _proc_stat, _start_time, owner_record
from bench.executors import InProcessExecutor, ProcessExecutor, make_executor, threads_per_worker
from bench.runner import RunConfig, run
from bench.store import ResultsStore
from tests.conftest import TINY_PRISM
from tests.plugins.fake_methods import register_fakes

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def fakes(monkeypatch):
    from bench import registry

    monkeypatch.setattr(registry, "_group", registry._group)  # restored after the test
    register_fakes()


def _cfg(results, methods=("bt", "oracle"), seeds=(0, 1, 2), params=None, **kw):
    params = params or ({"bt": {"iterations": 30}} if "bt" in methods else {})
    return RunConfig(methods=list(methods), dataset=TINY_PRISM, seeds=list(seeds), results=Path(results), params=params, **kw)


def _rows(results):
    rows, metas, problems = ResultsStore(results).load()
    assert not problems
    return rows.sort_values(["cell", "user"]).reset_index(drop=True), metas


# ---------------------------------------------------------------------------- claims


def test_claim_is_exclusive_and_released_only_by_its_owner(tmp_path):
    a, b = ClaimDir(tmp_path), ClaimDir(tmp_path)
    assert a.try_claim("k")
    assert a.try_claim("k")  # re-entrant for its holder
    assert not b.try_claim("k")  # same process, other holder: a live owner
    b.release("k")  # not b's claim: nothing happens
    assert a.is_live("k")
    a.release("k")
    assert not a.is_live("k") and b.try_claim("k")


def test_claims_of_dead_or_reused_pids_and_silent_hosts_are_stale(tmp_path):
    cd = ClaimDir(tmp_path, stale_after=30)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead = {**owner_record(), "pid": proc.pid}
    (tmp_path / "dead.claim").write_text(json.dumps(dead))
    reused = {**owner_record(), "started": "1"}  # this pid, but another process start time
    (tmp_path / "reused.claim").write_text(json.dumps(reused))
    remote = {**owner_record(), "host": "elsewhere", "boot": "x"}
    (tmp_path / "remote.claim").write_text(json.dumps(remote))
    (tmp_path / "old.claim").write_text(json.dumps(remote))
    os.utime(tmp_path / "old.claim", (time.time() - 60, time.time() - 60))
    assert not cd.is_live("dead") and not cd.is_live("reused") and not cd.is_live("old")
    assert cd.is_live("remote")  # another host that touched its claim recently
    assert cd.try_claim("dead") and cd.try_claim("reused") and cd.try_claim("old")
    assert not cd.try_claim("remote")
    assert json.loads((tmp_path / "dead.claim").read_text())["pid"] == os.getpid()


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_a_zombie_owner_holds_nothing(tmp_path):
    """A killed worker whose parent has not reaped it yet still answers kill(pid, 0)."""
    cd = ClaimDir(tmp_path, stale_after=30)
    proc = subprocess.Popen([sys.executable, "-c", "pass"])  # not waited for: a zombie until we reap it
    try:
        deadline = time.time() + 30
        while _proc_stat(proc.pid)[0] != "Z" and time.time() < deadline:
            time.sleep(0.02)
        assert _proc_stat(proc.pid)[0] == "Z"
        rec = {**owner_record(), "pid": proc.pid, "started": _start_time(proc.pid)}
        (tmp_path / "z.claim").write_text(json.dumps(rec))
        assert not cd.is_live("z") and cd.try_claim("z")
    finally:
        proc.wait()


def test_a_run_removes_claims_whose_owners_die_while_it_runs(tmp_path):
    """An owner killed after writing its cell, still exiting when the next run starts: that run's
    first sweep sees it alive; the claim must still be gone when the run ends."""
    first = run(_cfg(tmp_path, seeds=(0,)), log=lambda m: None)
    done = first.keys[0]
    owner = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    claims = ResultsStore(tmp_path).claims_dir
    (claims / f"{done}.claim").write_text(json.dumps({**owner_record(), "pid": owner.pid, "started": _start_time(owner.pid)}))

    def kill_owner(*_):
        if owner.poll() is None:
            owner.kill()
            owner.wait()

    try:
        again = run(_cfg(tmp_path, seeds=(0, 1)), log=lambda m: None, progress=kill_owner)
    finally:
        kill_owner()
    assert again.cached == 2 and again.ran == 2
    assert not any(claims.iterdir()), list(claims.iterdir())


def test_threads_per_worker_never_oversubscribes(monkeypatch):
    monkeypatch.setattr("bench.executors.available_cpus", lambda: 8)
    assert threads_per_worker(1, None) is None  # the sequential path keeps the libraries' default
    assert threads_per_worker(2, None) == 4 and threads_per_worker(3, None) == 2 and threads_per_worker(16, None) == 1
    assert threads_per_worker(4, 3) == 3  # --threads wins


def test_executor_flags_are_checked():
    from bench.errors import BenchError

    assert isinstance(make_executor("local", 1), InProcessExecutor)
    with pytest.raises(BenchError, match="unknown executor"):
        make_executor("dask", 2)
    with pytest.raises(BenchError, match="--jobs"):
        make_executor("local", 0)


# ---------------------------------------------------------------------------- parallel = sequential


def test_worker_processes_store_the_rows_of_the_sequential_path(tmp_path):
    seq = run(_cfg(tmp_path / "seq", threads=1), log=lambda m: None)
    with ProcessExecutor(2) as ex:
        assert ex.threads >= 1
        par = run(_cfg(tmp_path / "par"), log=lambda m: None, executor=ex)
    assert (seq.ran, par.ran, par.failed) == (6, 6, [])
    assert sorted(seq.keys) == sorted(par.keys)
    a, _ = _rows(tmp_path / "seq")
    b, metas = _rows(tmp_path / "par")
    assert a.equals(b)
    assert {m["provenance"]["executor"] for m in metas} == {"processes"}
    assert len({m["provenance"]["worker"] for m in metas}) >= 1
    assert not any((tmp_path / "par" / "claims").iterdir())  # every claim released
    # resume: nothing left to do, with any executor
    with ProcessExecutor(2) as ex:
        again = run(_cfg(tmp_path / "par"), log=lambda m: None, executor=ex)
    assert (again.ran, again.cached) == (0, 6)


def test_progress_counts_every_cell_once(tmp_path):
    seen = []
    with ProcessExecutor(2) as ex:
        run(_cfg(tmp_path, seeds=(0, 1, 2, 3)), log=lambda m: None, executor=ex, progress=lambda d, n, t: seen.append((n, t)))
    assert seen[-1] == (8, 8)
    assert [n for n, _ in seen] == sorted(n for n, _ in seen)


# ---------------------------------------------------------------------------- crashes


def test_killed_worker_leaves_no_partial_cell_and_is_retried(tmp_path, fakes):
    cfg = _cfg(tmp_path / "r", methods=("suicide",), seeds=(0,), unseen_shots=[2, 5], params={"suicide": {"marker": str(tmp_path / "m")}})
    logs = []
    with ProcessExecutor(2) as ex:
        s = run(cfg, log=logs.append, executor=ex, retries=0)
    store = ResultsStore(tmp_path / "r")
    first, second = s.keys
    assert store.status(first).state == "done"  # written before the worker died
    assert store.status(second).state == "failed"
    assert not store.cell_path(second).exists() and not list(store.cells_dir.glob(".*.tmp"))
    rec = json.loads(store.failure_path(second).read_text())
    assert "worker process died (killed by SIGKILL)" in rec["error"]
    assert s.failed and s.failed[0]["stage"] == "worker" and s.ran == 1
    # the dead worker's claim on the failed cell is swept when the run ends; none is left
    assert not any(store.claims_dir.iterdir()), list(store.claims_dir.iterdir())
    with ProcessExecutor(2) as ex:
        again = run(cfg, log=logs.append, executor=ex)
    assert (again.ran, again.cached, again.failed) == (1, 1, [])
    assert store.status(second).state == "done" and not store.failure_path(second).exists()


def test_a_crashed_unit_is_retried_within_the_run(tmp_path, fakes):
    cfg = _cfg(tmp_path / "r", methods=("suicide",), seeds=(0, 1), unseen_shots=[2, 5], params={"suicide": {"marker": str(tmp_path / "m")}})
    logs = []
    with ProcessExecutor(2) as ex:
        s = run(cfg, log=logs.append, executor=ex, retries=1)
    assert s.failed == [] and s.ran == 4
    assert any("retrying" in m for m in logs)
    rows, _ = _rows(tmp_path / "r")
    assert rows["cell"].nunique() == 4


# ---------------------------------------------------------------------------- concurrent runs


def _bench(args, env):
    return subprocess.Popen(
        [sys.executable, "-m", "tests.plugins.run_with_fakes", *args],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )


@pytest.mark.slow
def test_two_concurrent_runs_compute_each_cell_exactly_once(tmp_path):
    counter = tmp_path / "fits.log"
    env = {**os.environ, "BENCH_TEST_COUNTER": str(counter), "PYTHONPATH": str(ROOT)}
    args = ["run", "--methods", "sleepy", "--dataset", TINY_PRISM, "--repeats", "8", "--results", str(tmp_path / "r"),
            "--param", "sleepy.delay=0.4", "--no-table"]
    procs = [_bench(args, env), _bench([*args, "--jobs", "2"], env)]
    outs = [p.communicate(timeout=240)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    fits = sorted(int(line.split()[0]) for line in counter.read_text().splitlines())
    assert fits == list(range(8))  # every cell computed once, by one of the two runs
    ran = [int(o.split(" cells computed")[0].split()[-1]) for o in outs]
    assert sum(ran) == 8
    assert len(list((tmp_path / "r" / "cells").glob("*.parquet"))) == 8
    assert not any((tmp_path / "r" / "claims").iterdir())
    # each run accounts for the cells the other computed (as cached or as computed by another run)
    for o, n in zip(outs, ran):
        assert n == 8 or "computed by another run" in o or "8 cached" in o, o


def test_a_run_waits_for_cells_another_run_holds_and_takes_over_dead_ones(tmp_path, fakes):
    cfg = _cfg(tmp_path / "r", methods=("sleepy",), seeds=(0, 1), params={"sleepy": {"delay": 0.0}})
    from bench.datasets import load_dataset
    from bench.runner import RunSummary, plan

    keys = [g.cells[0].key for g in plan(cfg, load_dataset(TINY_PRISM), RunSummary())]
    claims = ClaimDir(ResultsStore(tmp_path / "r").claims_dir)
    # seed 0: claimed by a live process that never finishes it → orphaned when that process dies
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        rec = {**owner_record(), "pid": holder.pid, "started": None}
        claims.dir.mkdir(parents=True, exist_ok=True)
        claims.path(keys[0]).write_text(json.dumps(rec))
        logs = []

        def progress(desc, n, t):
            if desc.startswith("waiting") and holder.poll() is None:
                holder.kill()
                holder.wait()

        s = run(cfg, log=logs.append, progress=progress)
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    assert s.ran == 2 and s.failed == []
    assert any("claimed by a run that stopped" in m for m in logs)


# ---------------------------------------------------------------------------- CLI


def test_cli_jobs_prints_the_table_of_the_sequential_run(cli, tmp_path):
    args = ["run", "--methods", "bt,oracle", "--dataset", TINY_PRISM, "--repeats", "2", "--param", "bt.iterations=30"]
    code, seq, err = cli(*args, "--results", tmp_path / "a", "--threads", "1")
    assert code == 0, err
    code, par, err = cli(*args, "--results", tmp_path / "b", "--jobs", "2")
    assert code == 0, err
    assert "2 local processes × " in par and "4 cells computed" in par
    # the rendered table: everything after the "… served from DIR" line (DIR differs)
    table = lambda out: out.split("served from")[-1].split("\n", 1)[1]  # noqa: E731
    assert "Overall" in table(seq) and table(seq) == table(par)


def test_cli_execution_flags_are_checked(cli, tmp_path, monkeypatch):
    base = ["run", "--methods", "oracle", "--dataset", TINY_PRISM, "--repeats", "1", "--results", tmp_path]
    code, _, err = cli(*base, "--llm-replicas", "2")
    assert code == 2 and "--llm-replicas needs --executor ray" in err
    code, _, err = cli(*base, "--retries", "-1")
    assert code == 2 and "--retries must be ≥ 0" in err
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    code, _, err = cli(*base, "--ray-address", "auto")
    assert code == 2 and "needs the 'ray' package" in err and "bench-prm[ray]" in err
    with pytest.raises(SystemExit):
        cli(*base, "--jobs", "0")


def test_resources_per_method():
    from typing import ClassVar

    from bench.api import Method
    from bench.executors import unit_resources
    from bench.registry import load_method

    class CPU(Method):
        requires = frozenset({"features"})

    class GPU(Method):
        requires = frozenset({"features", "gpu"})

    class Big(Method):
        resources: ClassVar[dict] = {"num_cpus": 8, "memory": 4e9}

    assert unit_resources(CPU, "cpu", None) == {"num_cpus": 1.0}
    assert unit_resources(CPU, "cpu", 3) == {"num_cpus": 3.0}
    assert unit_resources(CPU, "cuda", None) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert unit_resources(GPU, "cpu", None) == {"num_cpus": 1.0, "num_gpus": 1.0}
    assert unit_resources(Big, "cpu", 2) == {"num_cpus": 8.0, "memory": 4e9}
    sm = load_method("synthesizeme")
    import bench.llm.vllm_compat as vc

    real_cpu = vc.runs_on_cpu
    vc.runs_on_cpu = lambda: False  # a CUDA build of vLLM
    try:
        assert unit_resources(sm, "cpu", None, {"backend": "vllm"}, {}) == {"num_cpus": 1.0, "num_gpus": 1.0}
        tp = {"backend": "vllm", "engine_options": {"tensor_parallel_size": 2}}
        assert unit_resources(sm, "cpu", None, tp, {})["num_gpus"] == 2.0
        vc.runs_on_cpu = lambda: True  # vLLM's CPU build: the task asks for CPUs only
        assert unit_resources(sm, "cpu", None, {"backend": "vllm"}, {}) == {"num_cpus": 1.0}
    finally:
        vc.runs_on_cpu = real_cpu
    # with engine replicas the engines (Ray actors) hold the GPUs, not the task
    assert unit_resources(sm, "cpu", None, {"backend": "vllm"}, {"llm_replicas": 2}) == {"num_cpus": 1.0}
    assert unit_resources(sm, "cpu", None, {"backend": "scripted"}, {}) == {"num_cpus": 1.0}

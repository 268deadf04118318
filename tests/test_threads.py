"""The thread policy (bench/threads.py): cores from affinity and cgroup quota, the plan, and that
applying it reaches threadpoolctl and torch."""

from __future__ import annotations

import pytest

from bench import threads


def test_cgroup_quota_is_read_from_v2_and_v1_files(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) == pytest.approx(1.5)
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads.cgroup_cpu_limit(tmp_path) is None
    v1 = tmp_path / "v1"
    (v1 / "cpu").mkdir(parents=True)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("100000")
    (v1 / "cpu" / "cpu.cfs_period_us").write_text("100000")
    assert threads.cgroup_cpu_limit(v1) == pytest.approx(1.0)
    (v1 / "cpu" / "cpu.cfs_quota_us").write_text("-1")
    assert threads.cgroup_cpu_limit(v1) is None
    assert threads.cgroup_cpu_limit(tmp_path / "absent") is None


def test_available_cores_is_capped_by_the_quota(monkeypatch):
    monkeypatch.setattr(threads, "_affinity", lambda: 8)
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: None)
    assert threads.available_cores() == 8
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 2.5)
    assert threads.available_cores() == 3
    monkeypatch.setattr(threads, "cgroup_cpu_limit", lambda: 0.2)
    assert threads.available_cores() == 1


def test_plan_explicit_threads_win_else_blas_on_cores_torch_on_one(monkeypatch):
    monkeypatch.setattr(threads, "available_cores", lambda: 4)
    assert threads.plan(3) == threads.ThreadPlan(3, 3)
    assert threads.plan(None) == threads.ThreadPlan(4, threads.DEFAULT_TORCH_THREADS)
    assert threads.plan(None, jobs=2) == threads.ThreadPlan(2, 1)
    assert threads.plan(None, jobs=16) == threads.ThreadPlan(1, 1)


def test_apply_reaches_threadpoolctl_and_torch(monkeypatch):
    torch = pytest.importorskip("torch")
    from threadpoolctl import threadpool_info

    monkeypatch.setattr(threads, "available_cores", lambda: 1)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.setenv(var, "7")  # restored by monkeypatch afterwards
    old = torch.get_num_threads()
    try:
        threads.apply(None)
        assert torch.get_num_threads() == 1
        blas = [i for i in threadpool_info() if i["user_api"] == "blas"]
        assert blas and all(i["num_threads"] == 1 for i in blas)
        assert (threads.os.environ["OMP_NUM_THREADS"], threads.os.environ["OPENBLAS_NUM_THREADS"]) == ("1", "1")
        threads.apply(2)
        assert torch.get_num_threads() == 2
        with threads.single_threaded_blas():
            assert all(i["num_threads"] == 1 for i in threadpool_info() if i["user_api"] == "blas")
        with threads.torch_threads(1):
            assert torch.get_num_threads() == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)

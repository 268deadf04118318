"""How many threads a process's numerical libraries use: one policy for every method and executor.

The policy (applied by :func:`apply`, called where a worker or an in-process run starts and around
each fit by :func:`bench.executors.pin_threads`):

* ``--threads N`` given: BLAS/OpenMP (through threadpoolctl) and torch's intra-op pool get N.
* otherwise: BLAS gets the cores this process may really use — its affinity mask, capped by a
  cgroup CPU quota (``cpu.max``; v1 ``cpu.cfs_quota_us``) — divided by the number of local
  workers; torch's intra-op pool gets **one** thread.

Why torch gets one thread: the torch methods here (PAL, VPL, GPO, the MAML ablation) run tens of
thousands of small operations (4–64 pairs against a D × h projection). Their intra-op team of two
threads meets at a barrier after every operation; when another process holds one of the cores,
the thread that lost its core stalls that barrier for a scheduler time slice, every operation —
the 18× slowdown of GPO at load 6 in ``docs/performance.md``. One thread never waits for a
descheduled partner. BLAS keeps the cores: BT and LoRe spend their time in a few large products
(thousands of rows × D) that split well, where a thread that loses its core costs at most its half.
``benchmarks/load.py`` measures both choices idle and with one core kept busy.

The thread count never depends on the machine's current load, so the same command on the same
machine uses the same threads (results and ``provenance.threads`` stay reproducible).
"""

from __future__ import annotations

import contextlib
import math
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

#: torch intra-op threads when ``--threads`` is not given (see the module docstring)
DEFAULT_TORCH_THREADS = 1


def _affinity() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def cgroup_cpu_limit(root: Path = Path("/sys/fs/cgroup")) -> float | None:
    """CPUs' worth of time the cgroup quota allows (``None``: no quota or unreadable)."""
    try:
        text = (root / "cpu.max").read_text().split()
        if len(text) >= 2 and text[0] != "max":
            quota, period = float(text[0]), float(text[1])
            return quota / period if quota > 0 and period > 0 else None
        if text:
            return None
    except (OSError, ValueError):
        pass
    try:  # cgroup v1
        quota = float((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period = float((root / "cpu" / "cpu.cfs_period_us").read_text())
        return quota / period if quota > 0 and period > 0 else None
    except (OSError, ValueError):
        return None


def available_cores() -> int:
    """Cores this process may run on: the affinity mask, capped by a cgroup quota (≥ 1)."""
    n = _affinity()
    limit = cgroup_cpu_limit()
    if limit is not None:
        n = min(n, max(1, math.ceil(limit - 1e-9)))
    return max(1, n)


@dataclass(frozen=True)
class ThreadPlan:
    blas: int
    torch: int


def plan(threads: int | None = None, jobs: int = 1) -> ThreadPlan:
    """The policy: ``threads`` for both pools if given, else the available cores ÷ ``jobs`` for
    BLAS and :data:`DEFAULT_TORCH_THREADS` for torch."""
    if threads is not None:
        n = max(1, int(threads))
        return ThreadPlan(n, n)
    return ThreadPlan(max(1, available_cores() // max(1, int(jobs))), DEFAULT_TORCH_THREADS)


def apply(threads: int | None = None, jobs: int = 1) -> ThreadPlan:
    """Apply :func:`plan` to this process: threadpoolctl for every loaded BLAS/OpenMP library,
    ``torch.set_num_threads`` when torch is loaded, and ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS``
    (read when torch loads later) and ``OPENBLAS_NUM_THREADS`` (read by a BLAS that loads later)."""
    p = plan(threads, jobs)
    os.environ["OMP_NUM_THREADS"] = str(p.torch)
    os.environ["MKL_NUM_THREADS"] = str(p.torch)
    os.environ["OPENBLAS_NUM_THREADS"] = str(p.blas)
    try:
        from threadpoolctl import threadpool_limits

        threadpool_limits(limits=p.blas, user_api="blas")
        threadpool_limits(limits=p.torch, user_api="openmp")
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        pass
    if "torch" in sys.modules:
        import torch

        if torch.get_num_threads() != p.torch:
            torch.set_num_threads(p.torch)
    return p


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run every loaded BLAS on one thread inside the block (restored afterwards), for loops of
    many small products (MRM's meta-training: (n × D)·(D × K) with n ≈ 10–300)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover - threadpoolctl is a dependency
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


@contextlib.contextmanager
def torch_threads(n: int = 1) -> Iterator[None]:
    """torch's intra-op pool at ``n`` threads inside the block (restored afterwards)."""
    import torch

    old = torch.get_num_threads()
    if old != n:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != old:
            torch.set_num_threads(old)

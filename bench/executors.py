"""Cell executors: where the runner's units of work run.

A *unit* is one fit group's missing cells (see :mod:`bench.runner`): the method is fitted once on
a split's seen users and then adapted and scored once per unseen budget, each budget one cell in
the results store. Units are plain data (dataset spec, split seed, method target, params, cell
keys), so any process that can import the method and read the dataset and results directory can
run one. Three executors share one interface (``run(units) → (unit, result) as they finish``):

* :class:`InProcessExecutor` (``--jobs 1``, the default): units run one after the other in this
  process — the sequential path.
* :class:`ProcessExecutor` (``--jobs N``): N long-lived worker processes on this machine (spawned,
  not forked), each pinned to ``threads`` BLAS/torch threads (default: the CPUs this process may
  use ÷ N), so N workers never oversubscribe the cores. A worker that dies (killed, out of
  memory, segfault) is detected through its process sentinel; exactly its unit is reported as
  crashed and a fresh worker replaces it.
* :class:`RayExecutor` (``--executor ray [--ray-address ADDR]``): one Ray task per unit, with the
  CPUs/GPUs the method declares (``Method.resources``; ``gpu`` in ``requires`` or a CUDA
  ``--device`` asks for one GPU). Without an address a local Ray instance is started.

Workers write cells into the results store themselves (atomically) under a per-cell claim
(:mod:`bench.claims`); the store stays the single source of truth. The driver only counts, retries
crashed units (``retries`` times) and waits for cells that another run is computing.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench.errors import BenchError, IntegrityError, StorageError

# Environment variables read by BLAS / OpenMP runtimes when they load; set before a worker imports NumPy.
THREAD_ENV = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)


def available_cpus() -> int:
    """CPUs this process may run on (its affinity mask; cgroup quotas are not read)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def threads_per_worker(jobs: int, threads: int | None) -> int | None:
    """``threads`` if given, else the available CPUs ÷ jobs (≥ 1); None for one in-process job."""
    if threads is not None:
        return int(threads)
    if jobs <= 1:
        return None
    return max(1, available_cpus() // jobs)


def pin_threads(n: int | None) -> None:
    """Limit BLAS/OpenMP and torch to ``n`` threads in this process; ``None``: the default
    policy of :mod:`bench.threads` (BLAS on the available cores, torch on one thread)."""
    from bench.threads import apply

    apply(n)


@contextlib.contextmanager
def thread_env(n: int | None, extra: dict[str, str] | None = None) -> Iterator[dict[str, str]]:
    """Set the BLAS/OpenMP thread variables (and ``extra``) while child processes are started."""
    env = dict(extra or {})
    if n is not None:
        env.update({k: str(n) for k in THREAD_ENV})
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        yield env
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# ---------------------------------------------------------------------------- units


@dataclass
class Unit:
    """One fit group's cells: everything a worker needs, as plain data."""

    dataset: str  # the dataset spec (a worker loads it itself; memoised per process)
    results: str  # absolute results directory
    seed: int
    seen_ratio: float
    test_fraction: float | None
    shots: int | None
    method: str  # registered name (for rows and messages)
    target: str  # "module:QualName" of the method class (workers import it directly)
    params: dict[str, Any]
    cells: list[tuple[str, dict[str, Any], int | None]]  # (key, cell dict, unseen budget)
    device: str = "cpu"
    threads: int | None = None
    resources: dict[str, float] = field(default_factory=dict)  # num_cpus, num_gpus, memory
    options: dict[str, Any] = field(default_factory=dict)  # Context.options (e.g. llm_replicas)
    executor: str = "local"
    deterministic: bool = False  # run the cells in bench.determinism.deterministic_mode

    @property
    def label(self) -> str:
        return f"{self.method} seed {self.seed}"

    def with_cells(self, keys: set[str]) -> "Unit":
        from dataclasses import replace

        return replace(self, cells=[c for c in self.cells if c[0] in keys])


@dataclass
class CellOutcome:
    key: str
    state: str  # "done" (computed here), "failed", "cached" (found done), "busy" (claimed by another run)
    failure: dict[str, Any] | None = None


@dataclass
class UnitResult:
    outcomes: list[CellOutcome]
    logs: list[str] = field(default_factory=list)
    worker: str = ""
    seconds: float = 0.0


@dataclass
class Crash:
    """A unit whose worker died (or whose task the cluster lost) before reporting — or stopped on
    an error that ends the whole run (``fatal``: a full or read-only results directory, a corrupt
    split file), which the driver raises instead of retrying."""

    reason: str
    fatal: dict[str, str] | None = None  # {"type", "message", "hint"} of a BenchError

    @classmethod
    def of(cls, e: BenchError) -> "Crash":
        return cls(f"{type(e).__name__}: {e}", {"type": type(e).__name__, "message": e.message, "hint": e.hint or ""})

    def error(self) -> BenchError:
        kinds = {c.__name__: c for c in (StorageError, IntegrityError, BenchError)}
        f = self.fatal or {}
        return kinds.get(f.get("type", ""), BenchError)(f.get("message", self.reason), hint=f.get("hint") or None)


def method_target(cls: type) -> str:
    from bench.registry import local_target

    return local_target(cls) or f"{cls.__module__}:{cls.__qualname__}"


def import_target(target: str) -> type:
    import importlib

    if target.startswith("file:"):  # a method from a local file (--methods ./my_method.py:MyMethod)
        from bench.registry import load_local_method

        return load_local_method(target[len("file:"):])

    module, _, qual = target.partition(":")
    obj: Any = importlib.import_module(module)
    for part in qual.split("."):
        obj = getattr(obj, part)
    return obj


def unit_resources(
    cls: type, device: str, threads: int | None, params: dict[str, Any] | None = None, options: dict[str, Any] | None = None
) -> dict[str, float]:
    """What one unit of ``cls`` asks of a Ray cluster: the method's declared resources
    (``Method.resources`` / ``resources_for``: ``num_cpus``, ``num_gpus``, ``memory`` in bytes), else
    ``threads`` CPUs (1 by default) and one GPU when the method requires ``gpu`` or runs on CUDA."""
    hook = getattr(cls, "resources_for", None)
    declared = dict(hook(params or {}, options or {}) if hook else getattr(cls, "resources", {}) or {})
    out: dict[str, float] = {"num_cpus": float(declared.pop("num_cpus", threads or 1))}
    wants_gpu = "gpu" in getattr(cls, "requires", ()) or str(device).startswith("cuda")
    gpus = float(declared.pop("num_gpus", 1 if wants_gpu else 0))
    if gpus:
        out["num_gpus"] = gpus
    out.update({k: float(v) for k, v in declared.items()})
    return out


# ---------------------------------------------------------------------------- the worker side

_EXECUTION: dict[str, Any] = {}  # provenance of the running unit (read by the runner's cell metadata)


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_unit(unit: Unit, log: Callable[[str], None] | None = None) -> UnitResult:
    """Claim, compute and store the unit's cells that are neither done nor claimed by another run.

    Failures of the method are recorded in the store (``<key>.failed.json``) and reported; the
    claims are released only after the cell (or its failure) is written.
    """
    from bench.claims import ClaimDir
    from bench.determinism import deterministic_mode
    from bench.runner import CellPlan, FitGroup, RunConfig, RunSummary, _run_group
    from bench.store import ResultsStore

    t0 = time.perf_counter()
    logs: list[str] = []
    say = log or logs.append
    store = ResultsStore(unit.results)
    claims = ClaimDir(store.claims_dir)
    outcomes: list[CellOutcome] = []
    mine: list[CellPlan] = []
    try:
        for key, cell, unseen in unit.cells:
            if store.status(key).state == "done":
                outcomes.append(CellOutcome(key, "cached"))
                continue
            if not claims.try_claim(key, note=unit.label):
                outcomes.append(CellOutcome(key, "busy"))
                continue
            if store.status(key).state == "done":  # finished between our look and our claim
                claims.release(key)
                outcomes.append(CellOutcome(key, "cached"))
                continue
            store.remove_stale_temporaries(key)
            mine.append(CellPlan(key, cell, unseen))
        if mine:
            from bench.datasets import load_dataset
            from bench.splits import load_or_create_split

            pin_threads(unit.threads)
            cls = import_target(unit.target)
            ds = load_dataset(unit.dataset)
            _check_same_code(cls, ds, mine[0].cell)
            cfg = RunConfig(
                methods=[unit.method],
                dataset=unit.dataset,
                seeds=[unit.seed],
                results=Path(unit.results),
                seen_ratio=unit.seen_ratio,
                test_fraction=unit.test_fraction,
                device=unit.device,
                threads=unit.threads,
            )
            split = load_or_create_split(cfg.results, ds, unit.seed, unit.seen_ratio)
            g = FitGroup(unit.method, cls, unit.params, unit.seed, unit.shots, mine)
            summary = RunSummary()
            _EXECUTION.clear()
            _EXECUTION.update({"executor": unit.executor, "worker": worker_name(), "deterministic": bool(unit.deterministic)})
            from bench import progress

            with deterministic_mode(unit.deterministic), progress.unit(unit.label):
                _run_group(cfg, ds, split, g, mine, store, summary, say, options=unit.options)
            failed = {f["key"]: f for f in summary.failed}
            for c in mine:
                outcomes.append(CellOutcome(c.key, "failed" if c.key in failed else "done", failed.get(c.key)))
    except (StorageError, IntegrityError):
        raise  # the results directory cannot be written, or a stored split is corrupt: the run stops
    except Exception as e:  # loading the dataset or the method failed: every claimed cell fails
        from bench.runner import _record_failure

        summary = RunSummary()
        todo = [c for c in mine if store.status(c.key).state != "done"]
        if todo:
            _record_failure(store, summary, todo, e, say, stage="setup")
        failed = {f["key"]: f for f in summary.failed}
        done_keys = {o.key for o in outcomes}
        for c in mine:
            if c.key not in done_keys:
                outcomes.append(CellOutcome(c.key, "failed" if c.key in failed else "done", failed.get(c.key)))
    finally:
        _EXECUTION.clear()
        claims.release_all()
    return UnitResult(outcomes, logs if log is None else [], worker_name(), time.perf_counter() - t0)


def _check_same_code(cls: type, ds, cell: dict[str, Any]) -> None:
    """A worker must run the very code and data the cell key was computed from (clusters)."""
    here = {"source": cls.source_hash(), "method_version": cls.version, "dataset_fp": ds.fingerprint}
    diff = [k for k, v in here.items() if cell.get(k) != v]
    if diff:
        raise BenchError(
            f"worker {worker_name()} has a different {', '.join(diff)} than the driver for {cell['method']} "
            f"({', '.join(f'{k} {cell.get(k)} ≠ {here[k]}' for k in diff)})",
            hint="install the same bench version (and method plugins) on every node, and give them the same dataset",
        )


# ---------------------------------------------------------------------------- executors


class Executor:
    """Runs units; yields ``(unit, UnitResult | Crash)`` as each finishes."""

    name = "local"
    jobs = 1
    threads: int | None = None

    def has_gpu(self) -> bool | None:
        """Whether the workers can use a GPU; None: the driver's own CUDA check decides."""
        return None

    def describe(self) -> str:
        return self.name

    def run(self, units: list[Unit], on_start: Callable[[Unit], None] | None = None) -> Iterator[tuple[Unit, UnitResult | Crash]]:
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class InProcessExecutor(Executor):
    """Units one after another in this process: today's sequential path (``--jobs 1``)."""

    name = "local"

    def __init__(self, threads: int | None = None, log: Callable[[str], None] | None = None):
        self.threads = threads
        self.log = log

    def run(self, units, on_start=None):
        for u in units:
            if on_start:
                on_start(u)
            yield u, run_unit(u, log=self.log)


def _worker_main(conn, threads: int | None) -> None:  # pragma: no cover - runs in a child process
    # Ctrl-C reaches the whole process group: the driver decides, the workers stop on SIGTERM.
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    def _term(signum, frame):
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, _term)
    pin_threads(threads)
    from bench import progress

    # progress inside a cell (bench.progress.step) goes to the driver as ("progress", event)
    progress.set_sink(lambda ev: conn.send(("progress", ev)))
    while True:
        try:
            unit = conn.recv()
        except (EOFError, OSError):
            return
        if unit is None:
            return
        try:
            res: UnitResult | Crash = run_unit(unit)
        except (StorageError, IntegrityError) as e:
            res = Crash.of(e)
        except BaseException as e:  # noqa: BLE001 - report, do not die silently
            res = Crash(f"{type(e).__name__}: {e}\n{traceback.format_exc()}")
        try:
            conn.send(res)
        except (OSError, ValueError):
            return


@dataclass
class _Worker:
    proc: Any
    conn: Any
    unit: Unit | None = None


class ProcessExecutor(Executor):
    """``jobs`` worker processes on this machine, each pinned to ``threads`` threads."""

    name = "processes"

    def __init__(self, jobs: int, threads: int | None = None, device: str = "cpu"):
        if jobs < 1:
            raise BenchError(f"--jobs must be ≥ 1, got {jobs}")
        self.jobs = int(jobs)
        self.threads = threads_per_worker(self.jobs, threads)
        self.device = device
        self._workers: list[_Worker] = []
        self._started = 0

    def describe(self) -> str:
        return f"{self.jobs} local processes × {self.threads} threads"

    def _gpu_env(self) -> dict[str, str]:
        """With ``--device cuda`` and several GPUs, worker i sees GPU i mod n only (``cuda:k`` pins one)."""
        if self.device != "cuda":
            return {}
        try:
            import torch

            n = torch.cuda.device_count()
        except ImportError:
            return {}
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        ids = [x for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(n)]
        return {"CUDA_VISIBLE_DEVICES": ids[self._started % len(ids)]} if len(ids) > 1 else {}

    def _spawn(self) -> _Worker:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        parent, child = ctx.Pipe()
        with thread_env(self.threads, self._gpu_env()):
            proc = ctx.Process(target=_worker_main, args=(child, self.threads), daemon=True, name=f"bench-worker-{self._started}")
            proc.start()
        child.close()
        self._started += 1
        return _Worker(proc, parent)

    def run(self, units, on_start=None):
        from multiprocessing.connection import wait

        queue = list(units)
        busy: list[_Worker] = []
        idle = [w for w in self._workers if w.proc.is_alive()]
        self._workers = list(idle)
        try:
            while queue or busy:
                while queue and (idle or len(self._workers) < self.jobs):
                    if idle:
                        w = idle.pop()
                    else:
                        w = self._spawn()
                        self._workers.append(w)
                    w.unit = queue.pop(0)
                    if on_start:
                        on_start(w.unit)
                    w.conn.send(w.unit)
                    busy.append(w)
                ready = wait([w.conn for w in busy] + [w.proc.sentinel for w in busy])
                for w in list(busy):
                    if w.conn in ready:
                        try:
                            res = w.conn.recv()
                        except (EOFError, OSError):
                            res = None
                        if isinstance(res, tuple) and len(res) == 2 and res[0] == "progress":
                            from bench import progress

                            progress.forward(res[1])  # progress inside the worker's cell, not its result
                            continue
                        if res is not None:
                            busy.remove(w)
                            unit, w.unit = w.unit, None
                            idle.append(w)
                            yield unit, res
                            continue
                    if w.proc.sentinel in ready or not w.proc.is_alive():
                        w.proc.join(timeout=5)
                        busy.remove(w)
                        self._workers.remove(w)
                        unit, w.unit = w.unit, None
                        yield unit, Crash(f"worker process died ({_exit_reason(w.proc.exitcode)})")
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        for w in self._workers:
            try:
                w.conn.send(None)
            except (OSError, ValueError):
                pass
        deadline = time.time() + 5
        for w in self._workers:
            if w.unit is not None:  # still computing (interrupted): stop it, its claims are released on SIGTERM
                w.proc.terminate()
            w.proc.join(timeout=max(0.1, deadline - time.time()))
            if w.proc.is_alive():
                w.proc.kill()
                w.proc.join(timeout=5)
            w.conn.close()
        self._workers = []


def _exit_reason(code: int | None) -> str:
    if code is None:
        return "exit code unknown"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


# ---------------------------------------------------------------------------- Ray


def require_ray():
    try:
        import ray
    except ImportError:
        raise BenchError(
            "--executor ray needs the 'ray' package",
            hint="pip install 'bench-prm[ray]' (on every node of the cluster)",
        ) from None
    return ray


def worker_env() -> dict[str, str]:
    """Environment variables a Ray task needs from the driver (the caches, the claim timeout)."""
    keys = ("BENCH_CACHE", "BENCH_CLAIM_STALE_S", "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "CUBLAS_WORKSPACE_CONFIG")
    return {k: os.environ[k] for k in keys if k in os.environ}


def _ray_run_unit(unit: Unit) -> UnitResult | Crash:  # pragma: no cover - runs in a Ray worker
    threads = unit.threads or max(1, int(unit.resources.get("num_cpus", 1)))
    pin_threads(threads)
    os.environ.update({k: str(threads) for k in THREAD_ENV})  # for libraries loaded later
    try:
        return run_unit(unit)
    except (StorageError, IntegrityError) as e:
        return Crash.of(e)


class RayExecutor(Executor):
    """One Ray task per unit. ``address`` None starts a local Ray instance with ``jobs`` CPUs (or all)."""

    name = "ray"

    def __init__(self, address: str | None = None, jobs: int | None = None, threads: int | None = None):
        self.ray = require_ray()
        self.address = address
        self.jobs = jobs or 0
        self.threads = threads
        self._started_here = False
        self._ready = False

    def has_gpu(self) -> bool:  # asked while planning GPU methods only
        self._init()
        return self.gpus > 0

    def _init(self) -> None:
        """Start or join Ray on first use: a run whose cells are all stored never starts it."""
        if self._ready:
            return
        ray = self.ray
        env = worker_env()
        if not ray.is_initialized():
            kw: dict[str, Any] = {"include_dashboard": False, "log_to_driver": True, "namespace": "bench"}
            if self.address:
                kw["address"] = self.address
            else:
                # a local instance: workers see this interpreter's import path (plugins, tests)
                env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p and os.path.isdir(p))
                if self.jobs:
                    kw["num_cpus"] = self.jobs
            kw["runtime_env"] = {"env_vars": env}
            try:
                ray.init(**kw)
            except ConnectionError as e:
                raise BenchError(
                    f"cannot reach the Ray cluster at {self.address}: {e}",
                    hint="start it with `ray start --head` (and `ray start --address=HEAD:6379` on the other nodes), "
                    "or leave --ray-address out for a local instance",
                ) from None
            self._started_here = True
        res = ray.cluster_resources()
        self.cpus = int(res.get("CPU", 0))
        self.gpus = int(res.get("GPU", 0))
        self._ready = True

    def describe(self) -> str:
        where = self.address or "local"
        if not self._ready:
            return f"Ray ({where})"
        return f"Ray ({where}: {self.cpus} CPUs, {self.gpus} GPUs)"

    def run(self, units, on_start=None):
        if not units:
            return
        self._init()
        ray = self.ray
        remote = ray.remote(_ray_run_unit)
        refs: dict[Any, Unit] = {}
        for u in units:
            opts: dict[str, Any] = {"max_retries": 0, "num_cpus": u.resources.get("num_cpus", 1)}
            if u.resources.get("num_gpus"):
                opts["num_gpus"] = u.resources["num_gpus"]
            if u.resources.get("memory"):
                opts["memory"] = u.resources["memory"]
            custom = {k: v for k, v in u.resources.items() if k not in ("num_cpus", "num_gpus", "memory")}
            if custom:
                opts["resources"] = custom
            if opts.get("num_gpus", 0) > self.gpus or opts["num_cpus"] > max(self.cpus, 1):
                raise BenchError(
                    f"{u.method} asks for {opts['num_cpus']:g} CPUs and {opts.get('num_gpus', 0):g} GPUs per unit; "
                    f"the Ray cluster has {self.cpus} CPUs and {self.gpus} GPUs",
                    hint="add nodes, lower --threads, or run on a cluster with GPUs",
                )
            refs[remote.options(**opts).remote(u)] = u
            if on_start:
                on_start(u)
        try:
            while refs:
                ready, _ = ray.wait(list(refs), num_returns=1)
                for r in ready:
                    u = refs.pop(r)
                    try:
                        res = ray.get(r)
                    except ray.exceptions.RayError as e:
                        res = Crash(f"Ray task failed ({type(e).__name__}): {str(e).splitlines()[0] if str(e) else ''}")
                    yield u, res
        except BaseException:
            for r in refs:
                with contextlib.suppress(Exception):
                    ray.cancel(r, force=True)
            raise

    def close(self) -> None:
        ray = self.ray
        if not self._ready:
            return
        with contextlib.suppress(Exception):
            for name in ray.util.list_named_actors():
                if str(name).startswith("bench-llm-"):
                    ray.kill(ray.get_actor(name))
        if self._started_here and ray.is_initialized():
            ray.shutdown()
            self._started_here = False
        self._ready = False


def make_executor(
    kind: str = "local",
    jobs: int = 1,
    threads: int | None = None,
    ray_address: str | None = None,
    device: str = "cpu",
    log: Callable[[str], None] | None = None,
) -> Executor:
    """The executor the flags ask for: ``--executor local --jobs N`` or ``--executor ray``."""
    if jobs < 1:
        raise BenchError(f"--jobs must be ≥ 1, got {jobs}")
    if kind == "ray":
        return RayExecutor(ray_address, jobs=jobs if jobs > 1 else None, threads=threads)
    if kind != "local":
        raise BenchError(f"unknown executor '{kind}'", hint="use --executor local (with --jobs N) or --executor ray")
    if ray_address:
        raise BenchError("--ray-address needs --executor ray")
    if jobs == 1:
        return InProcessExecutor(threads, log=log)
    return ProcessExecutor(jobs, threads, device=device)

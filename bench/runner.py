"""Plan and run cells: dataset → split → method → per-user rows → results store.

A *fit group* is (dataset, split seed, seen budget, method, params): the method is fitted once on
the seen users' train pairs, then adapted and scored once per requested unseen budget, each of
which is one *cell* in the store. Finished cells are never recomputed (resume is the default);
a failing method marks its cells failed with the traceback and the run goes on.
"""

from __future__ import annotations

import functools
import os
import platform
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from bench import __version__
from bench.api import Context, Method, Queries, UserPairs
from bench.config import resolve_params
from bench.data import Dataset
from bench.determinism import torch_deterministic
from bench.errors import BenchError, StorageError
from bench.hashing import canonical_json, hash_obj, mix64, tag
from bench.metrics import pair_credit, user_accuracy
from bench.registry import load_method
from bench.splits import Split, load_or_create_split
from bench.store import ENGINE_VERSION, ResultsStore
from bench.text import plural

if TYPE_CHECKING:
    from bench.executors import Crash, Executor, Unit

Budget = int | None  # None = all of the user's train pairs


# parse_budget lives in bench.budgets (a dataset's own config needs it too); re-exported here.
from bench.budgets import parse_budget  # noqa: E402,F401


@dataclass
class RunConfig:
    methods: list[str]
    dataset: str
    seeds: list[int]
    results: Path
    shots: Budget | str = "default"
    unseen_shots: list[Budget] | str = "default"
    seen_ratio: float = 0.5
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # per method
    global_params: dict[str, Any] = field(default_factory=dict)  # key=value for every method having it
    test_fraction: float | None = None
    device: str = "cpu"
    threads: int | None = None
    skip_unavailable: bool = False  # True for --methods all
    options: dict[str, Any] = field(default_factory=dict)  # Context.options (execution hints, e.g. llm_replicas)
    deterministic: bool = False  # torch's deterministic algorithms in the workers (see bench.determinism)


@dataclass
class CellPlan:
    key: str
    cell: dict[str, Any]
    unseen_shots: Budget


@dataclass
class FitGroup:
    method: str
    cls: type[Method]
    params: dict[str, Any]
    seed: int
    shots: Budget
    cells: list[CellPlan]


@dataclass
class RunSummary:
    planned: int = 0
    cached: int = 0
    ran: int = 0
    failed: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    keys: list[str] = field(default_factory=list)
    interrupted: bool = False
    elsewhere: int = 0  # cells found finished by another run (concurrent runs into one directory)


def resolve_budgets(cfg: RunConfig, ds: Dataset) -> tuple[Budget, list[Budget]]:
    shots = cfg.shots
    if shots == "default":
        shots = parse_budget(ds.defaults.get("shots"), "--shots")
    unseen = cfg.unseen_shots
    if unseen == "default":
        unseen = [parse_budget(ds.defaults.get("unseen_shots"), "--unseen-shots", allow_zero=True)]
    return shots, list(dict.fromkeys(unseen))


def check_capabilities(
    cls: type[Method], ds: Dataset, gpu_available: bool | Callable[[], bool | None] | None = None
) -> str | None:
    """Why the dataset cannot serve this method, or None. ``gpu_available`` None: this machine's CUDA
    decides (an executor for a cluster passes whether the cluster has GPUs, possibly as a callable
    asked only for GPU methods)."""
    missing = set(cls.requires) - set(ds.capabilities) - {"gpu", "llm"}
    if missing:
        why = f"needs {', '.join(sorted(missing))}, which {ds.name} does not provide"
        if {"features", "prompt_features", "rm_score"} & missing and ds.meta.get("features_hint"):
            why += f" ({ds.meta['features_hint']})"
        return why
    if "gpu" in cls.requires:
        avail = gpu_available() if callable(gpu_available) else gpu_available
        if not (_cuda_available() if avail is None else avail):
            return "needs a CUDA GPU"
    return None


def _cuda_available() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return bool(torch.cuda.is_available())


def plan(
    cfg: RunConfig, ds: Dataset, summary: RunSummary, gpu_available: bool | Callable[[], bool | None] | None = None
) -> list[FitGroup]:
    shots, unseen_list = resolve_budgets(cfg, ds)
    groups: list[FitGroup] = []
    for name in cfg.methods:
        from bench.tuning import split_name, tuning_spec

        base, tuned = split_name(name)  # "mrm@tuned": mrm, tuned on validation data (bench/tuning.py)
        try:
            cls = load_method(base)
        except BenchError as e:  # a broken plugin: with --methods all it is skipped, the others run
            if not cfg.skip_unavailable:
                raise
            summary.skipped[name] = f"is broken ({e.message})"
            continue
        why = check_capabilities(cls, ds, gpu_available)
        if why is not None:
            if cfg.skip_unavailable:
                summary.skipped[name] = why
                continue
            raise BenchError(f"method '{name}' cannot run on dataset '{ds.name}': it {why}", hint="pick another method or dataset (bench list shows what each needs and provides)")
        overrides = {**cfg.params.get(base, {}), **cfg.params.get(name, {})}
        for k, v in cfg.global_params.items():
            if k in cls.param_names():
                overrides.setdefault(k, v)
        params = resolve_params(cls, ds.family, overrides, dataset=ds.name)
        source = cls.source_hash()
        spec = tuning_spec(base, ds.family, ds.name, params) if tuned else None
        for seed in cfg.seeds:
            cells = []
            for unseen in unseen_list:
                cell = {
                    "engine": ENGINE_VERSION,
                    "dataset": ds.name,
                    "dataset_fp": ds.fingerprint,
                    "seed": int(seed),
                    "seen_ratio": float(cfg.seen_ratio),
                    "shots": shots,
                    "unseen_shots": unseen,
                    "test_fraction": cfg.test_fraction,
                    "method": name,
                    "method_version": cls.version,
                    "source": source,
                    "params": params,
                }
                if spec is not None:
                    cell["tuning"] = spec  # tuned cells are keyed apart from official ones
                cells.append(CellPlan(hash_obj(cell), cell, unseen))
            if spec is not None:  # the choice depends on the unseen budget: one fit group per budget
                groups.extend(FitGroup(name, cls, params, int(seed), shots, [c]) for c in cells)
            else:
                groups.append(FitGroup(name, cls, params, int(seed), shots, cells))
    if cfg.global_params:
        used = {k for k in cfg.global_params for g in groups if k in g.cls.param_names()}
        unused = sorted(set(cfg.global_params) - used)
        if unused:
            raise BenchError(f"--param {', '.join(unused)}: no selected method has such a parameter", hint="check the spelling, or name the method: --param METHOD.KEY=VALUE (bench card METHOD lists its parameters)")
    return groups


# ---------------------------------------------------------------------------- views


def pair_view(ds: Dataset, split: Split, mask: np.ndarray) -> UserPairs:
    """The pairs under ``mask``, sorted by (user, support order)."""
    arr = ds.arrays()
    idx = np.flatnonzero(mask)
    idx = idx[np.lexsort((split.order[idx], split.user_index[idx]))]
    return UserPairs(
        users=split.users,
        seen=split.seen,
        user=split.user_index[idx],
        group=arr["group_code"][idx],
        chosen=arr["chosen"][idx],
        rejected=arr["rejected"][idx],
        pair_id=arr["pair_id"][idx],
        seed=split.seed,
    )


def held_out_mask(ds: Dataset, split: Split, test_fraction: float | None) -> np.ndarray:
    mask = ~split.train
    if test_fraction is not None:
        # A fixed, seed-independent subsample shared by every method compared on it.
        h = mix64(np.uint64(tag("test_fraction")), ds.arrays()["pair_hash"])
        keep = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53) < test_fraction
        mask &= keep
    return mask


def query_view(ds: Dataset, split: Split, mask: np.ndarray, with_truth: bool) -> tuple[Queries, np.ndarray]:
    """Test pairs as unlabelled queries, and (engine only) whether option a is the chosen one."""
    arr = ds.arrays()
    idx = np.flatnonzero(mask)
    idx = idx[np.argsort(split.user_index[idx], kind="stable")]
    coin = mix64(np.uint64(split.seed), np.uint64(tag("orient")), arr["pair_hash"][idx]) & np.uint64(1)
    a_is_chosen = coin.astype(bool)
    ch, rj = arr["chosen"][idx], arr["rejected"][idx]
    truth_a = truth_b = None
    if with_truth:
        tc, tr = arr["true_chosen"][idx], arr["true_rejected"][idx]
        truth_a, truth_b = np.where(a_is_chosen, tc, tr), np.where(a_is_chosen, tr, tc)
    q = Queries(
        users=split.users,
        seen=split.seen,
        user=split.user_index[idx],
        group=arr["group_code"][idx],
        a=np.where(a_is_chosen, ch, rj),
        b=np.where(a_is_chosen, rj, ch),
        pair_id=arr["pair_id"][idx],
        truth_a=truth_a,
        truth_b=truth_b,
    )
    return q, a_is_chosen


# ---------------------------------------------------------------------------- provenance


@functools.lru_cache(maxsize=1)
def environment() -> dict[str, Any]:
    def ver(pkg: str) -> str | None:
        try:
            return metadata.version(pkg)
        except metadata.PackageNotFoundError:
            return None

    return {
        "bench": __version__,
        "git_commit": _git_commit(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "packages": {p: ver(p) for p in ("numpy", "pandas", "pyarrow", "torch", "transformers", "vllm", "scipy")},
    }


def _git_commit() -> str | None:
    import subprocess

    here = Path(__file__).resolve().parent.parent
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        timeout=5,
        check=False,
    )
    return out.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def _set_threads(n: int | None) -> None:
    """Pin BLAS/OpenMP (threadpoolctl) and torch to ``n`` threads (None: leave them alone)."""
    from bench.executors import pin_threads

    pin_threads(n)


# ---------------------------------------------------------------------------- execution

ProgressFn = Callable[[str, int, int], None]


def run(
    cfg: RunConfig,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = print,
    executor: "Executor | None" = None,
    retries: int = 1,
) -> RunSummary:
    """Run every missing cell of ``cfg``; return what happened. Never recomputes finished cells.

    ``executor`` (see :mod:`bench.executors`) decides where the fit groups run: None is the
    sequential in-process path; ``ProcessExecutor``/``RayExecutor`` run them in parallel.
    """
    return run_many([cfg], progress=progress, log=log, executor=executor, retries=retries)


def run_many(
    cfgs: list[RunConfig],
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = print,
    executor: "Executor | None" = None,
    retries: int = 1,
    poll_s: float = 1.0,
) -> RunSummary:
    """Plan several run configurations, then run all their missing cells through one executor.

    Workers claim each cell before computing it (``RESULTS/claims/``), so cells that another run is
    computing are skipped and waited for; when their owner dies they are computed here. A unit
    whose worker dies is retried ``retries`` times, then its cells are marked failed.
    """
    from bench.executors import InProcessExecutor

    ex = executor or InProcessExecutor(cfgs[0].threads if cfgs else None, log=log)
    summary = RunSummary()
    units: list[Unit] = []
    for cfg in cfgs:
        units.extend(_prepare(cfg, ex, summary, log))
    n_todo = sum(len(u.cells) for u in units)
    if len(cfgs) > 1 or not isinstance(ex, InProcessExecutor):
        log(f"{plural(n_todo, 'cell')} to run in {plural(len(units), 'fit group')} on {ex.describe()}")
    try:
        _drive(units, ex, summary, progress, log, n_todo, retries, poll_s)
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        if executor is None:
            ex.close()
        _sweep_claims(cfgs)
    return summary


def _sweep_claims(cfgs: list[RunConfig]) -> None:
    """Once more at the end: claims whose killed owners were still exiting when the run started
    (a cell written, its claim never released) are stale by now; leave no such file behind."""
    from bench.claims import ClaimDir

    for root in {Path(c.results) for c in cfgs}:
        try:
            ClaimDir(ResultsStore(root).claims_dir).sweep()
        except OSError:
            pass  # a read-only or vanished results directory: the next run sweeps


def _prepare(cfg: RunConfig, ex: "Executor", summary: RunSummary, log: Callable[[str], None]) -> list["Unit"]:
    """Load, plan and check one configuration; its units of missing cells (counts into ``summary``)."""
    from bench.datasets import load_dataset
    from bench.executors import Unit, method_target, unit_resources

    store = ResultsStore(cfg.results)
    store.ensure_writable()
    from bench.claims import ClaimDir

    ClaimDir(store.claims_dir).sweep()  # claims that killed runs left on cells they had finished
    ds = load_dataset(cfg.dataset)
    log(describe_dataset(ds))
    skipped_before = set(summary.skipped)
    local = RunSummary()
    groups = plan(cfg, ds, local, gpu_available=ex.has_gpu)
    summary.skipped.update(local.skipped)
    for name, why in local.skipped.items():
        if name not in skipped_before:
            log(f"skipping {name}: it {why}")

    units: list[Unit] = []
    planned = cached = 0
    results = str(Path(cfg.results).resolve())
    for g in groups:
        missing = []
        for c in g.cells:
            summary.keys.append(c.key)
            st = store.status(c.key)
            if st.state == "corrupt":
                dest = store.quarantine(store.cell_path(c.key), st.reason)
                log(f"[warn] {st.reason}; moved to {dest}; recomputing")
            if st.state == "done":
                cached += 1
            else:
                missing.append(c)
        planned += len(g.cells)
        if missing:
            threads = cfg.threads if cfg.threads is not None else ex.threads
            units.append(
                Unit(
                    dataset=cfg.dataset,
                    results=results,
                    seed=g.seed,
                    seen_ratio=cfg.seen_ratio,
                    test_fraction=cfg.test_fraction,
                    shots=g.shots,
                    method=g.method,
                    target=method_target(g.cls),
                    params=g.params,
                    cells=[(c.key, c.cell, c.unseen_shots) for c in missing],
                    device=cfg.device,
                    threads=threads,
                    resources=unit_resources(g.cls, cfg.device, threads, g.params, cfg.options),
                    options=dict(cfg.options),
                    executor=ex.name,
                    deterministic=cfg.deterministic,
                )
            )
    summary.planned += planned
    summary.cached += cached
    n_todo = sum(len(u.cells) for u in units)
    log(f"{ds.name}: {plural(planned, 'cell')} planned — {cached} cached, {n_todo} to run")
    local.notes = []
    _budget_notes(cfg, ds, local, groups)
    summary.notes.extend(n for n in local.notes if n not in summary.notes)
    return units


def _drive(units, ex, summary: RunSummary, progress, log, n_todo: int, retries: int, poll_s: float) -> None:
    """Hand units to the executor; count outcomes; retry crashed units; wait for other runs' cells."""
    from bench.claims import ClaimDir
    from bench.executors import Crash

    state = {"done": 0, "running": 0}
    attempts: dict[str, int] = {}
    waiting: dict[str, Unit] = {}  # cells another run is computing → the unit that would compute them here
    started = time.time()

    def on_start(u: Unit) -> None:
        state["running"] += 1
        if progress:
            more = state["running"] - 1
            progress(u.label + (f" (+{more} running)" if more > 0 else ""), state["done"], n_todo)

    def tick(u: Unit, n: int) -> None:
        state["done"] += n
        if progress:
            progress(f"{u.label} finished", state["done"], n_todo)

    pending = list(units)
    while pending or waiting:
        requeue: list[Unit] = []
        if pending:
            for u, res in ex.run(pending, on_start=on_start):
                state["running"] = max(0, state["running"] - 1)
                if isinstance(res, Crash) and res.fatal:
                    raise res.error()  # e.g. the results directory is full: stop, do not retry
                if isinstance(res, Crash):
                    requeue.extend(_crashed(u, res, attempts, retries, summary, log))
                    continue
                for line in res.logs:
                    log(line)
                n = 0
                for o in res.outcomes:
                    if o.state == "done":
                        summary.ran += 1
                        n += 1
                    elif o.state == "failed":
                        summary.failed.append(o.failure or {"key": o.key, "method": u.method, "seed": u.seed, "error": "failed", "stage": "?"})
                        n += 1
                    elif o.state == "cached":
                        summary.elsewhere += 1
                        n += 1
                    elif o.state == "busy":
                        waiting[o.key] = u
                tick(u, n)
        if requeue:
            pending = requeue
            continue
        pending = []
        if not waiting:
            break
        if progress:
            progress(f"waiting for {plural(len(waiting), 'cell')} another run is computing", state["done"], n_todo)
        time.sleep(poll_s)
        orphans: dict[int, tuple[Unit, set[str]]] = {}
        for key, u in list(waiting.items()):
            store = ResultsStore(u.results)
            if ClaimDir(store.claims_dir).is_live(key):
                continue
            st = store.status(key)
            if st.state == "done":
                summary.elsewhere += 1
            elif st.state == "failed" and _failed_since(store, key, started):
                summary.failed.append(_failure_record(store, key, u))
            else:  # its owner died or gave up without writing: compute it here
                orphans.setdefault(id(u), (u, set()))[1].add(key)
                del waiting[key]
                continue
            del waiting[key]
            tick(u, 1)
        pending = [u.with_cells(keys) for u, keys in orphans.values()]
        if pending:
            log(f"{plural(sum(len(k) for _, k in orphans.values()), 'cell')} claimed by a run that stopped; computing them here")
    if progress:
        progress("done", state["done"], n_todo)


def _crashed(u: "Unit", res: "Crash", attempts: dict[str, int], retries: int, summary: RunSummary, log) -> list["Unit"]:
    """A worker died while computing ``u``: retry its unfinished cells, or mark them failed."""
    from bench.claims import ClaimDir

    store = ResultsStore(u.results)
    claims = ClaimDir(store.claims_dir)
    left = {k for k, _c, _b in u.cells if store.status(k).state != "done"}
    for k, _c, _b in u.cells:
        if k not in left:
            summary.ran += 1  # written before the worker died
            if not claims.is_live(k) and claims.try_claim(k):  # drop the dead worker's claim on it
                claims.release(k)
    if not left:
        return []
    n = max(attempts.get(k, 0) for k in left) + 1
    for k in left:
        attempts[k] = n
    if n <= retries:
        log(f"[warn] {u.label}: {res.reason}; retrying its {plural(len(left), 'cell')} (attempt {n + 1} of {retries + 1})")
        return [u.with_cells(left)]
    err = f"WorkerCrash: {res.reason} ({n} attempt{'s' if n > 1 else ''})"
    log(f"[error] {u.label} failed: {err}")
    for k, cell, _b in u.cells:
        if k in left:
            store.write_failure(k, cell, err, res.reason)
            summary.failed.append({"key": k, "method": u.method, "seed": u.seed, "error": err, "stage": "worker"})
    return []


def _failed_since(store: ResultsStore, key: str, t: float) -> bool:
    import json

    try:
        return float(json.loads(store.failure_path(key).read_text()).get("time", 0)) >= t - 1
    except (OSError, ValueError):
        return False


def _failure_record(store: ResultsStore, key: str, u: "Unit") -> dict[str, Any]:
    import json

    try:
        rec = json.loads(store.failure_path(key).read_text())
    except (OSError, ValueError):
        rec = {}
    return {"key": key, "method": u.method, "seed": u.seed, "error": rec.get("error", "failed in another run"), "stage": "another run"}


def describe_dataset(ds: Dataset) -> str:
    """One line: users, pairs, pairs per user, and rows dropped while loading (and why)."""
    s = ds.summary()
    line = (
        f"{s['dataset']}: {s['users']:,} users, {s['pairs']:,} pairs "
        f"({s['pairs_per_user_mean']:.1f} per user, min {s['pairs_per_user_min']}, max {s['pairs_per_user_max']}), "
        f"features {s['dim'] or 'none'}"
    )
    dropped = {k: v for k, v in (s.get("dropped") or {}).items() if v}
    if dropped:
        line += "; dropped " + ", ".join(f"{v:,} {k}" for k, v in dropped.items())
    notes = {k: v for k, v in (ds.meta.get("notes") or {}).items() if v}
    if notes:
        line += "; note: " + ", ".join(f"{v:,} {k}" for k, v in notes.items())
    if ds.meta.get("ignored_columns"):
        line += "; ignored columns " + ", ".join(ds.meta["ignored_columns"])
    return line


def _budget_notes(cfg: RunConfig, ds: Dataset, summary: RunSummary, groups: list[FitGroup]) -> None:
    if not groups:
        return
    shots = groups[0].shots
    unseen = [c.unseen_shots for c in groups[0].cells]
    split = load_or_create_split(cfg.results, ds, groups[0].seed, cfg.seen_ratio)
    n_train = np.bincount(split.user_index[split.train], minlength=len(split.users))
    if shots is not None:
        short = split.seen & (n_train < shots)
        if short.any():
            summary.notes.append(
                f"{int(short.sum())} of {split.n_seen} seen users have fewer than {shots} train pairs "
                f"(min {int(n_train[short].min())}); they use all they have (n_support in the rows)"
            )
    for u in unseen:
        if u is None:
            continue
        short = ~split.seen & (n_train < u)
        if short.any():
            summary.notes.append(
                f"{int(short.sum())} of {int((~split.seen).sum())} unseen users have fewer than {u} train pairs "
                f"(min {int(n_train[short].min())}); they use all they have"
            )
    if (n_train == 0).any():
        summary.notes.append(
            f"{int((n_train == 0).sum())} users have no train pairs (n_support 0): seen ones add nothing to "
            "training and unseen ones are scored without support (zero-shot)"
        )
    no_test = np.bincount(split.user_index[~split.train], minlength=len(split.users)) == 0
    if no_test.any():
        summary.notes.append(f"{int(no_test.sum())} users have no test pairs; they have no accuracy (NaN) and are left out of means")


def make_context(
    ds: Dataset, seed: int, device: str = "cpu", threads: int | None = None, options: dict[str, Any] | None = None
) -> Context:
    """What a method may read besides its pairs (never labels of test pairs, never the split)."""
    prompt_of = None
    if ds.prompt_features is not None:
        prompt_of = ds.responses["prompt_id"].to_numpy(dtype=np.int64)
    return Context(
        info=ds.info(),
        features=ds.features,
        prompt_features=ds.prompt_features,
        prompt_of=prompt_of,
        rm_score=ds.rm_score,
        seed=seed,
        device=device,
        threads=threads,
        text=ds if ds.has_text else None,
        options=dict(options or {}),
    )


def _run_group(
    cfg: RunConfig,
    ds: Dataset,
    split: Split,
    g: FitGroup,
    cells: list[CellPlan],
    store: ResultsStore,
    summary: RunSummary,
    log: Callable[[str], None],
    options: dict[str, Any] | None = None,
) -> int:
    _set_threads(cfg.threads)
    ctx = make_context(ds, g.seed, cfg.device, cfg.threads, options if options is not None else cfg.options)
    from bench.tuning import domain_notes, wrap

    tuning = cells[0].cell.get("tuning") if cells else None
    run_params = g.params  # a tuned cell runs its chosen candidate; its rows keep the anchor (official) params
    t_fit = time.perf_counter()
    try:
        if tuning is not None:  # choose on validation carved from seen users' train halves (bench/tuning.py)
            from bench.tuning import select

            chosen, report = select(
                g.cls, tuning, ds, split, g.shots, cells[0].unseen_shots,
                lambda: make_context(ds, g.seed, cfg.device, cfg.threads, options if options is not None else cfg.options),
                log=log, label=g.method,
            )
            run_params = chosen
        notes = domain_notes(g.method, run_params, ds)
        for n in notes:
            log(wrap(f"[note] {n}"))
        method = g.cls(**run_params)
        seen_train = pair_view(ds, split, split.budget_mask(g.shots, 0) & split.seen[split.user_index])
        method.fit(seen_train, ctx)
        _set_threads(cfg.threads)
    except (KeyboardInterrupt, StorageError):
        raise
    except Exception as e:
        _record_failure(store, summary, cells, e, log, stage="fit")
        return 0
    fit_s = time.perf_counter() - t_fit

    tmask = held_out_mask(ds, split, cfg.test_fraction)
    queries, a_is_chosen = query_view(ds, split, tmask, with_truth="oracle" in g.cls.requires)
    ok = 0
    for c in cells:
        t0 = time.perf_counter()
        try:
            support = pair_view(ds, split, split.budget_mask(g.shots, c.unseen_shots))
            method.adapt(support)
            t1 = time.perf_counter()
            margin = np.asarray(method.score(queries), dtype=np.float64)
            t2 = time.perf_counter()
            if margin.shape[:1] != (len(queries),) or margin.ndim not in (1, 2):
                raise RuntimeError(
                    f"{g.method}.score returned shape {margin.shape}; expected ({len(queries)},) or ({len(queries)}, R)"
                )
            rows, meta = _cell_rows(ds, split, g, c, method, support, queries, a_is_chosen, margin)
            meta["timing"] = {"fit_s": fit_s, "adapt_s": t1 - t0, "score_s": t2 - t1, "fit_shared_by": len(cells)}
            meta["domain_notes"] = notes
            if tuning is not None:
                meta["tuning"] = report
            store.write_cell(c.key, rows, meta)
            ok += 1
        except (KeyboardInterrupt, StorageError):
            raise  # a full or read-only results directory stops the run; it is no failure of the method
        except Exception as e:
            _record_failure(store, summary, [c], e, log, stage="adapt/score")
    return ok


def _cell_rows(ds, split, g, c, method, support, queries, a_is_chosen, margin):
    n_users = len(split.users)
    credit = pair_credit(margin, a_is_chosen)
    n_correct, n_test, acc = user_accuracy(queries.user, credit, n_users)
    finite = np.isfinite(margin).all(axis=1) if margin.ndim == 2 else np.isfinite(margin)
    n_nan = np.bincount(queries.user, weights=(~finite).astype(float), minlength=n_users)
    rows = pd.DataFrame(
        {
            "cell": c.key,
            "dataset": ds.name,
            "features": str(ds.meta.get("feature_model", "none" if ds.features is None else "unknown")),
            "split_seed": g.seed,
            "split_hash": split.hash,
            "shots": pd.array([g.shots] * n_users, dtype="Int64"),
            "unseen_shots": pd.array([c.unseen_shots] * n_users, dtype="Int64"),
            "test_fraction": float("nan") if c.cell["test_fraction"] is None else float(c.cell["test_fraction"]),
            "method": g.method,
            "params": canonical_json(g.params),
            "user": split.users.astype(str),
            "seen": split.seen,
            "n_support": support.counts().astype(np.int64),
            "n_test": n_test.astype(np.int64),
            "n_correct": n_correct.astype(np.float64),
            "accuracy": acc,
        }
    )
    if n_nan.any():
        rows["n_invalid"] = n_nan.astype(np.int64)
    for col, values in method.extra_rows().items():
        rows[col] = np.asarray(values)
    formula = method.param_count()
    trained = method.trained_param_count()
    meta = {
        "cell": c.cell,
        "provenance": {
            **environment(), "device": ctx_device(method), "threads": _threads_now(), **_execution(),
            "torch_deterministic": torch_deterministic(),
        },
        "params_formula": {"shared": formula.shared, "per_user": formula.per_user},
        "params_trained": None if trained is None else {"shared": trained.shared, "per_user": trained.per_user},
        "n_users": {"seen": int(split.seen.sum()), "unseen": int((~split.seen).sum())},
        "n_invalid_scores": int(n_nan.sum()),
        "method_meta": method.extra_meta(),
        "finished_at": time.time(),
    }
    return rows, meta


def ctx_device(method: Method) -> str:
    ctx = getattr(method, "ctx_", None)
    return getattr(ctx, "device", "cpu")


def _execution() -> dict[str, Any]:
    from bench.executors import _EXECUTION

    return dict(_EXECUTION)


def _threads_now() -> int | None:
    if "torch" in sys.modules:
        import torch

        return int(torch.get_num_threads())
    return None


def _record_failure(store, summary, cells, exc, log, stage: str) -> None:
    tb = traceback.format_exc()
    err = f"{type(exc).__name__}: {exc}"
    for c in cells:
        store.write_failure(c.key, c.cell, err, tb)
        summary.failed.append({"key": c.key, "method": c.cell["method"], "seed": c.cell["seed"], "error": err, "stage": stage})
    log(f"[error] {cells[0].cell['method']} seed {cells[0].cell['seed']} failed in {stage}: {err}")


# ---------------------------------------------------------------------------- in-process helper


@dataclass
class SingleRun:
    method: Method
    split: Split
    queries: Queries
    a_is_chosen: np.ndarray
    margin: np.ndarray
    per_user: pd.DataFrame  # user, seen, n_support, n_test, accuracy
    fit_s: float
    score_s: float


def run_single(
    method: Method,
    ds: Dataset,
    seed: int = 0,
    shots: Budget = None,
    unseen_shots: Budget = None,
    seen_ratio: float = 0.5,
    device: str = "cpu",
) -> SingleRun:
    """Fit, adapt and score one method on one split in memory (tests, benchmarks, notebooks).

    Uses exactly the engine's views, so what a method sees here is what it sees in ``bench run``.
    """
    split = load_or_create_split(None, ds, seed, seen_ratio)
    ctx = make_context(ds, seed, device)
    t0 = time.perf_counter()
    method.fit(pair_view(ds, split, split.budget_mask(shots, 0) & split.seen[split.user_index]), ctx)
    support = pair_view(ds, split, split.budget_mask(shots, unseen_shots))
    method.adapt(support)
    t1 = time.perf_counter()
    queries, a_is_chosen = query_view(ds, split, ~split.train, with_truth="oracle" in method.requires)
    margin = np.asarray(method.score(queries), dtype=np.float64)
    t2 = time.perf_counter()
    n_correct, n_test, acc = user_accuracy(queries.user, pair_credit(margin, a_is_chosen), len(split.users))
    per_user = pd.DataFrame(
        {"user": split.users, "seen": split.seen, "n_support": support.counts(), "n_test": n_test, "accuracy": acc}
    )
    return SingleRun(method, split, queries, a_is_chosen, margin, per_user, t1 - t0, t2 - t1)

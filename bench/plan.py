"""``bench run --plan``: the cells a run would compute and how long they should take, before anything runs.

Each fit group (one method on one split; see :mod:`bench.runner`) is estimated with a per-method
cost model

    seconds ≈ a + b · work

where ``work`` counts what the method's loop touches: its iterations (epochs, steps, …, read
from its parameters) times the pairs each iteration visits (the seen users' train pairs for an
epoch over them, the batch for a step) times the feature dimension, plus the support and test
pairs it adapts to and scores. ``a`` (start-up) and ``b`` come from, in this order:

1. the timings finished cells of the same method and dataset recorded in the results directory
   (``b`` rescaled so that the model reproduces their median), when there are any;
2. built-in constants (:mod:`bench.plan_costs`) measured by ``benchmarks/plan_costs.py`` on the
   development machine — machine and load noted there; another machine may be faster or slower.

The plan never writes: no results directory, no split files.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

WARN_AFTER_S = 30 * 60  # a normal run whose estimate exceeds this says so before it starts


# ---------------------------------------------------------------------------- the cost model


def _num(params: dict[str, Any], *names: str, default: float = 1.0) -> float:
    for n in names:
        v = params.get(n)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            return float(v)
    return default


def work(method: str, params: dict[str, Any], n_fit: int, n_support: int, n_test: int, dim: int) -> float:
    """The method's amount of work for one fit group, in pair·dimension·iteration units."""
    d = max(int(dim or 1), 1)
    m = method.lower()
    if m in ("oracle", "rm"):
        return float(n_test)
    if m.startswith("gpo"):  # a step draws a fixed batch of users, not an epoch over the pairs
        steps = _num(params, "steps")
        batch = _num(params, "batch_users", default=1.0)
        return steps * batch * d + n_test * d
    if m.startswith("pal"):
        return (_num(params, "epochs") * n_fit + _num(params, "adapt_epochs") * n_support + n_test) * d
    if m.startswith("lore"):
        return (_num(params, "iterations") * n_fit + _num(params, "adapt_iterations") * n_support + n_test) * d
    if m.startswith("synthesizeme-ft"):
        return (_num(params, "epochs") * n_fit + n_test) * d
    if m.startswith("synthesizeme"):
        return float(n_support + n_test)
    iters = _num(params, "epochs", "steps", "iterations", "max_iter")
    return (iters * n_fit + n_support + n_test) * d


@dataclass
class Cost:
    a: float  # seconds of start-up per fit group
    b: float  # seconds per unit of work
    source: str  # "built-in" or "N stored groups"


def builtin_costs() -> dict[str, dict[str, Any]]:
    try:
        from bench.plan_costs import COSTS
    except ImportError:  # not measured yet (benchmarks/plan_costs.py --write makes it)
        return {}
    return COSTS


# ---------------------------------------------------------------------------- the plan


@dataclass
class GroupPlan:
    method: str
    seed: int
    label: str
    cells: int
    cached: int
    work: float
    seconds: float | None = None


@dataclass
class MethodPlan:
    method: str
    groups: int = 0  # fit groups with cells to run
    cells: int = 0
    cached: int = 0
    seconds: float | None = 0.0
    source: str = ""


@dataclass
class RunPlan:
    dataset: str
    dataset_line: str
    groups: list[GroupPlan] = field(default_factory=list)
    methods: list[MethodPlan] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)
    machine_note: str = ""

    @property
    def cells(self) -> int:
        return sum(g.cells for g in self.groups)

    @property
    def cached(self) -> int:
        return sum(g.cached for g in self.groups)

    @property
    def total_s(self) -> float:
        return sum(m.seconds or 0.0 for m in self.methods)

    @property
    def unknown(self) -> list[str]:
        return [m.method for m in self.methods if m.seconds is None and m.cells > m.cached]

    def estimates(self) -> dict[str, float]:
        """Unit label → estimated seconds, for the groups that have cells to run (the live ETA)."""
        return {g.label: g.seconds for g in self.groups if g.seconds is not None and g.cells > g.cached}


def _sizes(ds, seed: int, seen_ratio: float, shots, unseen, test_fraction) -> tuple[int, int, int]:
    """Seen train pairs within ``shots``, unseen support pairs within ``unseen``, test pairs (one split, in memory)."""
    from bench.runner import held_out_mask
    from bench.splits import make_split

    split = make_split(ds, seed, seen_ratio)
    seen_pair = split.seen[split.user_index]
    n_fit = int((split.budget_mask(shots, 0) & seen_pair).sum())
    n_sup = int((split.budget_mask(shots, unseen) & ~seen_pair).sum())
    n_test = int(held_out_mask(ds, split, test_fraction).sum())
    return n_fit, n_sup, n_test


def stored_timings(results: Path, dataset_fp: str) -> dict[str, list[tuple[dict[str, Any], float]]]:
    """Per method: (cell dict, seconds of its fit group) of finished cells on this dataset.

    Reads only each cell file's footer (its metadata), never its rows.
    """
    import pyarrow.parquet as pq

    from bench.store import META_KEY

    cells_dir = Path(results) / "cells"
    if not cells_dir.is_dir():
        return {}
    groups: dict[tuple, dict[str, Any]] = {}
    for path in sorted(cells_dir.glob("*.parquet")):
        try:
            meta = json.loads((pq.read_schema(path).metadata or {})[META_KEY])
            cell, timing = meta["cell"], meta["timing"]
        except Exception:  # noqa: BLE001 - an unreadable file only lacks a timing
            continue
        if cell.get("dataset_fp") != dataset_fp:
            continue
        gkey = (cell["method"], cell["seed"], json.dumps(cell.get("shots")), json.dumps(cell.get("params"), sort_keys=True),
                cell.get("source"))
        g = groups.setdefault(gkey, {"cell": cell, "fit": float(timing.get("fit_s", 0.0)), "rest": 0.0})
        g["rest"] += float(timing.get("adapt_s", 0.0)) + float(timing.get("score_s", 0.0))
    out: dict[str, list[tuple[dict[str, Any], float]]] = {}
    for (method, *_), g in groups.items():
        out.setdefault(method, []).append((g["cell"], g["fit"] + g["rest"]))
    return out


def make_plan(cfg, ds=None, gpu_available=None) -> RunPlan:
    """The plan of ``cfg`` (a :class:`bench.runner.RunConfig`): groups, cells, estimates. Writes nothing."""
    from bench.datasets import load_dataset
    from bench.runner import RunSummary, describe_dataset, plan
    from bench.store import ResultsStore

    ds = ds if ds is not None else load_dataset(cfg.dataset)
    summary = RunSummary()
    groups = plan(cfg, ds, summary, gpu_available=gpu_available)
    rp = RunPlan(ds.name, describe_dataset(ds), skipped=dict(summary.skipped))
    store = ResultsStore(cfg.results)
    dim = int(ds.features.dim) if ds.features is not None else 1
    seed0 = cfg.seeds[0] if cfg.seeds else 0
    sizes: dict[Any, tuple[int, int, int]] = {}

    def size_of(shots_, unseen_) -> tuple[int, int, int]:
        k = (shots_, unseen_)
        if k not in sizes:
            sizes[k] = _sizes(ds, seed0, cfg.seen_ratio, shots_, unseen_, cfg.test_fraction)
        return sizes[k]

    stored = stored_timings(cfg.results, ds.fingerprint) if groups else {}
    builtin = builtin_costs()
    rp.machine_note = builtin.get("_machine", {}).get("note", "")
    by_method: dict[str, MethodPlan] = {}
    for g in groups:
        cached = sum(1 for c in g.cells if store.status(c.key).state == "done")
        w = 0.0
        for i, c in enumerate(g.cells):
            n_fit, n_sup, n_test = size_of(g.shots, c.unseen_shots)
            wc = work(g.method, g.params, n_fit, n_sup, n_test, dim)
            if i:  # the fit is shared: later budgets add only their adaptation and scoring
                wc -= work(g.method, g.params, n_fit, 0, 0, dim)
            w += max(wc, 0.0)
        cost = _cost_for(g.method, builtin, stored.get(g.method), ds, cfg, dim, size_of)
        gp = GroupPlan(g.method, g.seed, f"{g.method} seed {g.seed}", len(g.cells), cached, w,
                       None if cost is None else cost.a + cost.b * w)
        rp.groups.append(gp)
        mp = by_method.setdefault(g.method, MethodPlan(g.method, source="" if cost is None else cost.source))
        mp.cells += gp.cells
        mp.cached += gp.cached
        if gp.cells > gp.cached:
            mp.groups += 1
            if gp.seconds is None or mp.seconds is None:
                mp.seconds = None
            else:
                mp.seconds += gp.seconds
        if cost is None:
            mp.source = "no cost model"
    rp.methods = list(by_method.values())
    return rp


def _cost_for(method: str, builtin: dict, stored: list | None, ds, cfg, dim: int, size_of) -> Cost | None:
    base = builtin.get(method)
    a = float(base["a"]) if base else 0.0
    if stored:
        ratios = []
        for cell, seconds in stored:
            try:
                n_fit, n_sup, n_test = size_of(cell.get("shots"), cell.get("unseen_shots"))
            except Exception:  # noqa: BLE001
                continue
            w = work(method, cell.get("params") or {}, n_fit, n_sup, n_test, dim)
            if w > 0:
                ratios.append(max(seconds - a, 0.0) / w)
        if ratios:
            b = statistics.median(ratios)
            return Cost(min(a, min(s for _c, s in stored)), b, f"{len(ratios)} stored")
    if base:
        return Cost(a, float(base["b"]), "built-in")
    return None


# ---------------------------------------------------------------------------- output


def render(rp: RunPlan, results: Path, jobs: int = 1) -> list[str]:
    """The plan as lines of at most 80 characters."""
    from bench.text import fmt_duration, plural

    todo = rp.cells - rp.cached
    lines = [
        f"plan for {rp.dataset}: {plural(rp.cells, 'cell')} — {rp.cached} cached, {todo} to run",
        f"{'method':<16} {'groups':>6} {'cells':>6} {'per group':>10} {'total':>9}  estimate from",
    ]
    for m in rp.methods:
        per = None if m.seconds is None or not m.groups else m.seconds / m.groups
        total = m.seconds if m.groups else 0.0
        src = m.source if m.groups else "all cached"
        lines.append(f"{m.method[:16]:<16} {m.groups:>6} {m.cells - m.cached:>6} {fmt_duration(per):>10} "
                     f"{fmt_duration(total):>9}  {src}"[:80])
    total = rp.total_s
    unknown = rp.unknown
    wall = total / max(1, jobs)
    head = f"total: {fmt_duration(total)}" + (f" of compute, ≈ {fmt_duration(wall)} with --jobs {jobs}" if jobs > 1 else "")
    if unknown:
        head += f" plus {', '.join(unknown)} (no estimate)"
    lines.append(head)
    for name, why in rp.skipped.items():
        lines.append(f"skipped: {name} ({why})"[:200])
    sources = {m.source for m in rp.methods if m.groups}
    notes = []
    if any(s.endswith("stored") for s in sources):
        notes.append(f"'N stored': fitted to the timings of N finished fit groups in {results}")
    if "built-in" in sources:
        notes.append("'built-in': constants measured by benchmarks/plan_costs.py"
                     + (f" ({rp.machine_note})" if rp.machine_note else ""))
    notes.append("not included: preparing (loading data, making splits, starting workers)")
    lines.extend(f"note: {n}" for n in notes)
    return lines


def warning(rp: RunPlan, jobs: int = 1, threshold_s: float | None = None) -> str | None:
    """A line for a run whose estimate exceeds ``threshold_s`` (default :data:`WARN_AFTER_S`), with
    how to make it shorter."""
    from bench.text import fmt_duration

    threshold_s = WARN_AFTER_S if threshold_s is None else threshold_s
    wall = rp.total_s / max(1, jobs)
    if wall <= threshold_s:
        return None
    todo = [m for m in rp.methods if m.groups and m.seconds]
    worst = max(todo, key=lambda m: m.seconds or 0.0) if todo else None
    seeds = len({g.seed for g in rp.groups})
    cut = [f"--repeats {max(1, seeds // 4)}" if seeds > 1 else None,
           f"--methods all,-{worst.method}" if worst is not None and len(todo) > 1 else None,
           "--jobs N" if jobs == 1 else None]
    cut_s = ", ".join(c for c in cut if c)
    share = f" ({worst.method}: {fmt_duration(worst.seconds)})" if worst is not None else ""
    return (f"note: this run is estimated at {fmt_duration(wall)}{share}; to shorten it use {cut_s}; "
            f"bench run --plan ... shows the estimate per method")


"""Scaling study: parallel cells, executor overhead, and how methods grow with the population.

    python benchmarks/scaling.py grid        # Table-1 grid (20 splits, synthetic-prism) vs --jobs 1, 2
    python benchmarks/scaling.py overhead    # per-cell and fixed cost: in-process, processes, Ray local
    python benchmarks/scaling.py population  # time + peak memory of each embedding method vs users (to 100k)

Each measurement runs in a fresh subprocess (a cold ``bench`` process, as a user would run it),
prints one JSON line, and each subcommand ends with a summary table. Wall time is
``time.perf_counter`` around the subprocess; CPU time is the children's user+system time; peak
memory is the child's ``ru_maxrss`` (it counts the pages of the memory-mapped feature file that
the method touched). The machine is shared: the load average at the start of each measurement
is printed with it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EMBEDDING_METHODS = ("bt", "mrm", "lore", "pal", "pal-a", "pal-b", "vpl", "gpo")
POPULATION_SPEC = "synthetic-prism:users={n},conversations=2,turn0_responses=2,extra_turn_prob=0,prompt_features=false"


def installed(names) -> list[str]:
    from bench.registry import method_names

    have = set(method_names())
    return [m for m in names if m in have]


def load() -> float:
    return os.getloadavg()[0]


def timed(cmd: list[str], env: dict | None = None, timeout: float | None = None) -> dict:
    r0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    la = load()
    t0 = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    wall = time.perf_counter() - t0
    r1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}\n{p.stderr[-2000:]}")
    cpu = (r1.ru_utime - r0.ru_utime) + (r1.ru_stime - r0.ru_stime)
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": round(la, 1), "stdout": p.stdout}


def bench_cmd() -> list[str]:
    return [sys.executable, "-m", "bench.cli"]


# ---------------------------------------------------------------------------- grid


def cmd_grid(a) -> None:
    methods = a.methods.split(",") if a.methods else installed(EMBEDDING_METHODS)
    rows = []
    for setting in a.settings.split(","):
        extra = ["--jobs", setting] if not setting.startswith("ray") else ["--executor", "ray", "--jobs", setting[3:] or "2"]
        for run in range(a.runs):
            out = Path(tempfile.mkdtemp(prefix="bench-scaling-"))
            try:
                cmd = [*bench_cmd(), "run", "--methods", ",".join(methods), "--dataset", a.dataset, "--repeats", str(a.repeats),
                       "--results", str(out), "--no-table", *extra]
                r = timed(cmd)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            cells = int(r["stdout"].split(" cells computed")[0].split()[-1])
            rec = {"bench": "grid", "setting": setting, "run": run, "methods": methods, "repeats": a.repeats, "cells": cells,
                   **{k: v for k, v in r.items() if k != "stdout"}}
            print(json.dumps(rec), flush=True)
            rows.append(rec)
    print(f"\nTable-1 grid on {a.dataset}: {', '.join(methods)} × {a.repeats} splits (median of {a.runs})")
    print("| setting | wall (s) | CPU (s) | speed-up | load at start |")
    print("| --- | --- | --- | --- | --- |")
    base = None
    for setting in a.settings.split(","):
        rs = [r for r in rows if r["setting"] == setting]
        w = statistics.median(r["wall_s"] for r in rs)
        base = base or w
        label = f"--jobs {setting}" if not setting.startswith("ray") else f"--executor ray --jobs {setting[3:] or 2}"
        print(f"| {label} | {w:.0f} | {statistics.median(r['cpu_s'] for r in rs):.0f} | {base / w:.2f}× | "
              f"{', '.join(str(r['load']) for r in rs)} |")


# ---------------------------------------------------------------------------- overhead


def cmd_overhead(a) -> None:
    """Fixed cost = a run whose cells are all stored; per-cell cost = (cold − fixed) / cells."""
    settings = {"in-process (--jobs 1)": ["--jobs", "1"], "processes (--jobs 2)": ["--jobs", "2"],
                "Ray local (--executor ray --jobs 2)": ["--executor", "ray", "--jobs", "2"]}
    rows = []
    unseen = ",".join(str(x) for x in range(1, a.budgets + 1))
    # Ray starts only when there is work, so a cold Ray run also pays for starting a local instance:
    # measured alone here and taken out of its per-cell figure
    startup = []
    for _ in range(a.runs):
        p = subprocess.run([sys.executable, "-c", RAY_START], capture_output=True, text=True)
        startup.append(float(p.stdout.strip().splitlines()[-1]) if p.returncode == 0 else float("nan"))
    ray_start = statistics.median(startup)
    print(json.dumps({"bench": "overhead", "setting": "ray-start", "seconds": [round(x, 2) for x in startup]}), flush=True)
    for label, extra in settings.items():
        for run in range(a.runs):
            out = Path(tempfile.mkdtemp(prefix="bench-overhead-"))
            try:
                cmd = [*bench_cmd(), "run", "--methods", a.method, "--dataset", a.dataset, "--repeats", str(a.repeats),
                       "--unseen-shots", unseen, "--results", str(out), "--no-table", *extra]
                cold = timed(cmd)
                warm = timed(cmd)
            finally:
                shutil.rmtree(out, ignore_errors=True)
            cells = a.repeats * a.budgets
            work = cold["wall_s"] - warm["wall_s"] - (ray_start if "ray" in extra else 0.0)
            rec = {"bench": "overhead", "setting": label, "run": run, "cells": cells, "groups": a.repeats,
                   "cold_s": cold["wall_s"], "fixed_s": warm["wall_s"], "load": cold["load"],
                   "startup_s": round(ray_start, 2) if "ray" in extra else 0.0,
                   "per_cell_ms": round(1000 * work / cells, 1), "per_group_ms": round(1000 * work / a.repeats, 1)}
            print(json.dumps(rec), flush=True)
            rows.append(rec)
    print(f"\n{a.method} on {a.dataset}: {a.repeats} fit groups × {a.budgets} unseen budgets = {a.repeats * a.budgets} cells "
          f"(median of {a.runs})")
    print("| executor | cold run (s) | fixed cost: all cells stored (s) | executor start (s) | per fit group (ms) | per cell (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for label in settings:
        rs = [r for r in rows if r["setting"] == label]
        med = lambda k: statistics.median(r[k] for r in rs)  # noqa: E731
        print(f"| {label} | {med('cold_s'):.1f} | {med('fixed_s'):.1f} | {med('startup_s'):.1f} | {med('per_group_ms'):.0f} | "
              f"{med('per_cell_ms'):.0f} |")


RAY_START = r"""
import time
t = time.perf_counter()
import ray
ray.init(num_cpus=2, include_dashboard=False, namespace="bench")
ray.get(ray.remote(lambda: 1).remote())  # a worker process is up
print(time.perf_counter() - t)
ray.shutdown()
"""


# ---------------------------------------------------------------------------- population

PROBE = r"""
import json, resource, sys, time
import numpy as np
from bench.datasets import load_dataset
from bench.registry import load_method
from bench.config import resolve_params
from bench.runner import make_context, pair_view, query_view
from bench.splits import make_split

spec, name, threads, overrides = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
from bench.executors import pin_threads
ds = load_dataset(spec)
split = make_split(ds, 0, 0.5)
cls = load_method(name)
params = resolve_params(cls, ds.family, overrides.get(name, {}), dataset=ds.name)
m = cls(**params)
ctx = make_context(ds, 0, "cpu", threads)
pin_threads(threads)
train = pair_view(ds, split, split.budget_mask(None, 0) & split.seen[split.user_index])
support = pair_view(ds, split, split.budget_mask(None, None))
q, _ = query_view(ds, split, ~split.train, with_truth=False)
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter(); c0 = time.process_time()
m.fit(train, ctx)
t1 = time.perf_counter()
m.adapt(support)
t2 = time.perf_counter()
s = np.asarray(m.score(q))
t3 = time.perf_counter(); c3 = time.process_time()
pc = m.param_count()
n_users = len(split.users)
print(json.dumps({"fit_s": t1 - t0, "adapt_s": t2 - t1, "score_s": t3 - t2, "cpu_s": c3 - c0,
                  "rss_before_mb": base / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "train_pairs": len(train), "queries": len(q), "users": n_users,
                  "params_shared": pc.shared, "params_per_user": pc.per_user,
                  "params_total": pc.total(n_users) if hasattr(pc, "total") else None,
                  "finite": bool(np.isfinite(s).all()), "epochs": params.get("epochs"), "iterations": params.get("iterations")}))
"""


def cmd_population(a) -> None:
    methods = a.methods.split(",") if a.methods else installed(EMBEDDING_METHODS)
    sizes = [int(x) for x in a.users.split(",")]
    from bench.config import parse_overrides

    overrides, _ = parse_overrides(a.param, methods)
    rows = []
    for n in sizes:
        spec = POPULATION_SPEC.format(n=n) + (f",dim={a.dim}" if a.dim != 4096 else "")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", f"from bench.datasets import load_dataset; load_dataset({spec!r})"], check=True,
                       capture_output=True)
        gen = time.perf_counter() - t0
        print(json.dumps({"bench": "population-data", "users": n, "spec": spec, "load_or_generate_s": round(gen, 1)}), flush=True)
        for name in methods:
            for run in range(a.runs if n <= a.repeat_below else 1):
                la = load()
                try:
                    p = subprocess.run([sys.executable, "-c", PROBE, spec, name, str(a.threads), json.dumps(overrides)], capture_output=True, text=True,
                                       timeout=a.timeout)
                except subprocess.TimeoutExpired:
                    rec = {"bench": "population", "users": n, "method": name, "run": run, "timeout_s": a.timeout, "load": la}
                    print(json.dumps(rec), flush=True)
                    rows.append(rec)
                    break
                if p.returncode != 0:
                    rec = {"bench": "population", "users": n, "method": name, "run": run, "error": p.stderr.strip().splitlines()[-1:]}
                else:
                    rec = {"bench": "population", "users": n, "method": name, "run": run, "load": round(la, 1),
                           **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in json.loads(p.stdout.strip().splitlines()[-1]).items()}}
                print(json.dumps(rec), flush=True)
                rows.append(rec)
    print(f"\nSimulated population: 2 conversations × 1 pair per user, D = {a.dim} float16 memory-mapped; "
          f"{a.threads} thread(s); medians of {a.runs} runs up to {a.repeat_below:,} users, 1 run above")
    print("| method | users | train pairs | fit (s) | epochs/iterations | adapt+score (s) | peak RSS (MB) | RSS before fit (MB) | parameters (shared + per user × users) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for name in methods:
        for n in sizes:
            rs = [r for r in rows if r["method"] == name and r["users"] == n]
            ok = [r for r in rs if "fit_s" in r]
            if not ok:
                why = "timeout" if any("timeout_s" in r for r in rs) else "error"
                print(f"| {name} | {n:,} | | {why} | | | | | |")
                continue
            med = lambda k: statistics.median(r[k] for r in ok)  # noqa: E731
            r0 = ok[0]
            total = r0["params_shared"] + r0["params_per_user"] * r0["users"]
            print(f"| {name} | {n:,} | {r0['train_pairs']:,} | {med('fit_s'):.1f} | {r0.get('epochs') or r0.get('iterations')} | {med('adapt_s') + med('score_s'):.1f} | "
                  f"{med('peak_rss_mb'):,.0f} | {med('rss_before_mb'):,.0f} | {r0['params_shared']:,} + {r0['params_per_user']:,} × "
                  f"{r0['users']:,} = {total:,} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("grid")
    g.add_argument("--dataset", default="synthetic-prism")
    g.add_argument("--methods", default=None, help="default: the embedding methods installed (bt, mrm, lore, pal, vpl, gpo)")
    g.add_argument("--repeats", type=int, default=20)
    g.add_argument("--settings", default="1,2", help="comma list of --jobs values; rayN for --executor ray --jobs N")
    g.add_argument("--runs", type=int, default=1)
    o = sub.add_parser("overhead")
    o.add_argument("--dataset", default="synthetic-prism")
    o.add_argument("--method", default="oracle")
    o.add_argument("--repeats", type=int, default=20)
    o.add_argument("--budgets", type=int, default=5)
    o.add_argument("--runs", type=int, default=3)
    p = sub.add_parser("population")
    p.add_argument("--users", default="1000,10000,100000")
    p.add_argument("--methods", default=None)
    p.add_argument("--dim", type=int, default=4096)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--repeat-below", type=int, default=10000, help="repeat (median of --runs) only up to this many users")
    p.add_argument("--timeout", type=float, default=1800)
    p.add_argument("--param", action="append", default=[], metavar="METHOD.KEY=VALUE", help="e.g. mrm.epochs=20 (stated in the output)")
    a = ap.parse_args()
    {"grid": cmd_grid, "overhead": cmd_overhead, "population": cmd_population}[a.cmd](a)


if __name__ == "__main__":
    main()

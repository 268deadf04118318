"""MRM speed: one split at PRISM scale, and the Table-1 grid through `bench run`.

    python benchmarks/mrm.py fit --runs 3                       # 200 epochs, synthetic-prism, seed 0
    python benchmarks/mrm.py fit --methods mrm,mrm-no-rpo --epochs 20
    python benchmarks/mrm.py grid                               # Table 1: PRISM + Reddit 100/150, 20 splits

`fit` times `fit` (wall and process CPU) and `adapt` + `score` of each method with its official
settings for the dataset's family (configs/methods/*.yaml), in-process, on the split of seed 0
(643 seen users at PRISM scale), and reports the median over --runs. `grid` runs the three
`bench run` commands of Table 1 in fresh subprocesses into an empty results directory (datasets
come from BENCH_CACHE) and reports each one's wall and CPU time (user + system of the child) and
the totals; on a busy shared machine the CPU time is the figure that does not depend on the load. Every line printed is
JSON; the load average is printed too, since these machines are shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time


def _load() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def fit_mode(args) -> None:
    from bench.config import resolve_params
    from bench.datasets import load_dataset
    from bench.registry import load_method
    from bench.runner import make_context, pair_view, query_view
    from bench.splits import make_split

    ds = load_dataset(args.dataset)
    split = make_split(ds, args.seed)
    ctx = make_context(ds, args.seed)
    shots = None if args.shots == "all" else int(args.shots)
    train = pair_view(ds, split, split.budget_mask(shots, 0) & split.seen[split.user_index])
    support = pair_view(ds, split, split.budget_mask(shots, None))
    queries, _ = query_view(ds, split, ~split.train, with_truth=False)
    print(json.dumps({"dataset": args.dataset, "seen_users": int(split.seen.sum()), "train_pairs": len(train),
                      "dim": ds.features.dim, "load": _load()}), flush=True)
    for name in args.methods.split(","):
        cls = load_method(name)
        params = resolve_params(cls, ds.family, {"epochs": args.epochs} if args.epochs is not None else {})
        walls, cpus, evals = [], [], []
        for r in range(args.runs):
            m = cls(**params)
            c0, t0 = time.process_time(), time.perf_counter()
            m.fit(train, ctx)
            walls.append(time.perf_counter() - t0)
            cpus.append(time.process_time() - c0)
            t1 = time.perf_counter()
            m.adapt(support)
            m.score(queries)
            evals.append(time.perf_counter() - t1)
            print(json.dumps({"method": name, "run": r, "epochs": params["epochs"], "fit_wall_s": round(walls[-1], 2),
                              "fit_cpu_s": round(cpus[-1], 2), "adapt_score_s": round(evals[-1], 2), "load": _load()}),
                  flush=True)
        print(json.dumps({"summary": name, "epochs": params["epochs"], "runs": args.runs,
                          "fit_wall_s_median": round(statistics.median(walls), 2),
                          "fit_cpu_s_median": round(statistics.median(cpus), 2),
                          "per_epoch_wall_ms": round(1e3 * statistics.median(walls) / max(1, params["epochs"]), 1),
                          "adapt_score_s_median": round(statistics.median(evals), 2)}), flush=True)


GRID = [
    ["--dataset", "synthetic-prism"],
    ["--dataset", "synthetic-reddit", "--shots", "100", "--unseen-shots", "50"],
    ["--dataset", "synthetic-reddit", "--shots", "150", "--unseen-shots", "50"],
]


def grid_mode(args) -> None:
    results = tempfile.mkdtemp(prefix="bench-mrm-grid-")
    total = total_cpu = 0.0
    for extra in GRID:
        cmd = [sys.executable, "-m", "bench", "run", "--methods", args.methods, "--repeats", str(args.repeats),
               "--results", results, "--no-table", *extra]
        load0 = _load()
        c0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        c1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (c1.ru_utime - c0.ru_utime) + (c1.ru_stime - c0.ru_stime)
        if p.returncode != 0:
            sys.stderr.write(p.stdout + p.stderr)
            raise SystemExit(f"command failed: {' '.join(cmd)}")
        total += wall
        total_cpu += cpu
        print(json.dumps({"command": " ".join(cmd[2:]), "wall_s": round(wall, 1), "cpu_s": round(cpu, 1),
                          "load_before": load0, "load_after": _load()}),
              flush=True)
    print(json.dumps({"summary": "grid", "methods": args.methods, "repeats": args.repeats, "total_wall_s": round(total, 1),
                      "total_cpu_s": round(total_cpu, 1),
                      "results": results}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="mode", required=True)
    f = sub.add_parser("fit")
    f.add_argument("--dataset", default="synthetic-prism")
    f.add_argument("--methods", default="mrm")
    f.add_argument("--epochs", type=int, default=None, help="default: the method's configured epochs (200)")
    f.add_argument("--runs", type=int, default=3)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--shots", default="all")
    g = sub.add_parser("grid")
    g.add_argument("--methods", default="mrm")
    g.add_argument("--repeats", type=int, default=20)
    args = ap.parse_args()
    fit_mode(args) if args.mode == "fit" else grid_mode(args)


if __name__ == "__main__":
    main()

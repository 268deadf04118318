"""Wall time of `bench paper`: the cold run, the resumed run, and re-rendering from stored results.

    python benchmarks/paper.py --repeats 10              # the issue's target: < 60 min cold on 2 CPUs
    python benchmarks/paper.py --repeats 10 --results DIR --skip-cold   # time re-rendering only
    python benchmarks/paper.py --repeats 20 --scale-check                 # tables' statistics at paper scale

Phases, each a fresh subprocess (peak RSS is its own, from wait4):
  1. `bench paper --datasets synthetic --repeats N` into an empty (or the given) results directory;
  2. the same command again (every cell cached: planning, verification and rendering only);
  3. `bench paper --render-only` --render-runs times (median reported).
The dataset cache (BENCH_CACHE) is used as it is: generate the synthetic datasets once beforehand
(`bench paper --plan` does) so that phase 1 measures the experiments, not dataset generation.
Which methods were installed decides what phase 1 runs; the script prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def timed(cmd: list[str]) -> tuple[float, float, str, float]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read().decode(errors="replace")
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code not in (0, 1):  # 1 = some cells failed: still a measurement, reported below
        sys.stderr.write(out[-4000:])
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}")
    # CPU time too: on a shared machine the wall time mostly measures the neighbours
    return wall, ru.ru_maxrss / 1024**2, out, ru.ru_utime + ru.ru_stime


def scale_check(repeats: int) -> None:
    """Time the tables' statistics (the part of rendering that grows with the results) at paper scale.

    Per-user rows are made up (in memory, no methods run): Table 1 with 8 rows × PRISM (1,287 users)
    and two Reddit settings (40 users), Table 2 with 5 rows × 16 columns on PRISM.
    """
    import numpy as np
    import pandas as pd

    from bench.experiments import Assignment, Plan, Setting
    from bench.reports import paper_tables as pt
    from bench.reports.resultset import ResultSet

    rng = np.random.default_rng(0)
    settings = {"prism": Setting("prism", "prism", "PRISM", None, None),
                "r100": Setting("r100", "reddit", "Reddit 100", 100, 50),
                "r150": Setting("r150", "reddit", "Reddit 150", 150, 50)}
    users = {"prism": 1287, "r100": 40, "r150": 40}
    t1 = ["rm", "bt", "gpo", "vpl", "pal", "lore", "mrm", "oracle"]
    t2 = ["mrm", "mrm-no-meta", "mrm-no-rpo", "mrm-no-basis", "mrm-no-adapt"]
    frames, assignments = [], []
    for sid, n in users.items():
        for m in sorted(set(t1) | set(t2)):
            for seed in range(repeats):
                key = f"{sid}-{m}-{seed}"
                frames.append(pd.DataFrame({"cell": key, "split_seed": seed, "split_hash": f"{sid}{seed}",
                                            "user": np.arange(n).astype(str), "seen": np.arange(n) < n // 2,
                                            "accuracy": rng.uniform(0.3, 0.9, n), "n_support": 5, "n_test": 5}))
                if m in t1:
                    assignments.append(Assignment("table1", key, sid, m, m, seed, settings[sid].unseen_shots, sid))
                if m in t2 and sid == "prism":
                    assignments.append(Assignment("table2", key, sid, m, m, seed, None, sid))
    cfg = {"alpha": 0.05, "n_unit": "users",
           "outputs": {"table1": {"kind": "table1", "settings": list(settings), "methods": t1, "ours": "mrm",
                                  "unranked": ["oracle"]},
                       "table2": {"kind": "table2", "settings": ["prism"], "methods": t2, "reference": "mrm"}}}
    plan = Plan(cfg, ["synthetic"], {"prism": ["prism"], "reddit": ["reddit"]}, settings, assignments, [], [], [], {},
                repeats, outputs=["table1", "table2"])
    t0 = time.perf_counter()
    rs = ResultSet.from_frames(plan, pd.concat(frames, ignore_index=True), {})
    t_load = time.perf_counter() - t0
    t0 = time.perf_counter()
    g1 = pt.table1(rs, "table1")
    t_1 = time.perf_counter() - t0
    t0 = time.perf_counter()
    g2 = pt.table2(rs, "table2")
    t_2 = time.perf_counter() - t0
    print(json.dumps({"phase": "scale-check", "repeats": repeats, "frames_s": round(t_load, 2),
                      "table1_s": round(t_1, 2), "table1_tests": len(g1.tests), "table2_s": round(t_2, 2),
                      "table2_tests": len(g2.tests)}), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--datasets", nargs="+", default=["synthetic"])
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--results", default=None, help="results directory (default: a new temporary one)")
    ap.add_argument("--render-runs", type=int, default=3)
    ap.add_argument("--skip-cold", action="store_true", help="only time the resumed run and re-rendering")
    ap.add_argument("--scale-check", action="store_true",
                    help="only time the tables' statistics on made-up rows at paper scale (8 methods, 1,287 users)")
    args = ap.parse_args()
    if args.scale_check:
        scale_check(args.repeats)
        return

    from bench.registry import METHOD_GROUP, _group

    results = args.results or tempfile.mkdtemp(prefix="bench-paper-")
    base = [sys.executable, "-m", "bench", "paper", "--datasets", *args.datasets, "--repeats", str(args.repeats),
            "--results", results]
    print(json.dumps({"installed_methods": sorted(_group(METHOD_GROUP)), "results": results, "cpus": os.cpu_count()}),
          flush=True)
    cold = None
    if not args.skip_cold:
        wall, rss, out, cpu = timed(base)
        cold = wall
        tail = [line for line in out.splitlines() if "cells computed" in line or "planned" in line]
        print(json.dumps({"phase": "cold", "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), "peak_rss_gib": round(rss, 2),
                          "log": tail}), flush=True)
    wall, rss, _, cpu = timed(base)
    resume = wall
    print(json.dumps({"phase": "resume", "wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "peak_rss_gib": round(rss, 2)}),
          flush=True)
    renders, cpus = [], []
    for i in range(args.render_runs):
        wall, rss, _, cpu = timed([*base, "--render-only"])
        renders.append(wall)
        cpus.append(cpu)
        print(json.dumps({"phase": "render-only", "i": i, "wall_s": round(wall, 2), "cpu_s": round(cpu, 2),
                          "peak_rss_gib": round(rss, 2)}), flush=True)
    med = statistics.median(renders) if renders else float("nan")
    med_cpu = statistics.median(cpus) if cpus else float("nan")
    load = os.getloadavg()[0]
    print(f"\nbench paper --datasets {' '.join(args.datasets)} --repeats {args.repeats}: "
          + (f"cold {cold / 60:.1f} min; " if cold is not None else "")
          + f"resumed {resume:.1f} s; re-render median {med:.1f} s wall / {med_cpu:.1f} s CPU over {len(renders)} runs "
          f"(cpus={os.cpu_count()}, load average {load:.1f})")


if __name__ == "__main__":
    main()

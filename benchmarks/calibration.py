"""Coverage and size of every interval and test, on seeded simulations of the protocol.

    python benchmarks/calibration.py                 # the designs of tests/test_calibration.py
    python benchmarks/calibration.py --extra         # + the rejected designs (old bootstrap, …)
    python benchmarks/calibration.py --reps 4000 --markdown

Not a speed benchmark: it prints one JSON line per (interval, design, metric, check) and, with
--markdown, the table quoted in docs/paper.md § Statistics. Coverage is the share of simulated
benchmarks whose 95 % interval holds the truth (target [0.93, 0.97]); size is the share of
simulated benchmarks under a true null whose test rejects at α = 0.05 (target ≤ 0.06). The
simulation and the truths are described in bench/calibration.py.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--reps", type=int, default=2000, help="simulated benchmarks per design and hypothesis")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--extra", action="store_true",
                    help="also the rejected designs: bootstrap within splits (the old one), bootstrap of users, "
                         "t over splits (slow: a few hundred replicates each)")
    ap.add_argument("--designs", default="reddit5,reddit20,prism5,prism20")
    ap.add_argument("--markdown", action="store_true", help="print the docs table at the end")
    args = ap.parse_args()

    import pandas as pd

    from bench.calibration import TrajectoryDesign, coverage_rows, prism_style, reddit_style, selection_bias_rows

    make = {"reddit5": lambda: reddit_style(5), "reddit20": lambda: reddit_style(20),
            "prism5": lambda: prism_style(5), "prism20": lambda: prism_style(20)}
    rows = []
    for name in args.designs.split(","):
        t0 = time.perf_counter()
        got = coverage_rows(make[name](), args.reps, args.seed, extra=args.extra)
        for r in got:
            print(json.dumps({**r, "value": round(r["value"], 4)}, ensure_ascii=False), flush=True)
        rows += got
        print(json.dumps({"design": name, "seconds": round(time.perf_counter() - t0, 1)}), flush=True)
    for S in (5, 20):
        got = selection_bias_rows(TrajectoryDesign(f"PRISM-style trajectories (1000 users, {S} splits)", 1000, S),
                                  args.reps, args.seed)
        for r in got:
            print(json.dumps({**r, "value": round(r["value"], 4)}, ensure_ascii=False), flush=True)
        rows += got
    if args.markdown:
        f = pd.DataFrame(rows)
        f["design"] = f["design"].str.replace(r" \(.*", "", regex=True) + " S=" + \
            f["design"].str.extract(r"(\d+) splits", expand=False)
        f["cell"] = [f"{v:.3f}" for v in f["value"]]
        tab = f.pivot_table(index=["interval", "check", "metric"], columns="design", values="cell", aggfunc="first",
                            sort=False)
        print()
        print("| interval | check | metric | " + " | ".join(tab.columns) + " |")
        print("|---|---|---|" + "---|" * len(tab.columns))
        for (interval, check, metric), r in tab.iterrows():
            print(f"| {interval} | {check} | {metric} | " + " | ".join("" if pd.isna(v) else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()

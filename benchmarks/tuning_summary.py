"""Summarise official vs METHOD@tuned cells of a results directory (docs/tuning.md).

    python benchmarks/tuning_summary.py RESULTS_DIR

Per dataset and method: Overall / Seen / Unseen accuracy, mean ± std over the splits present
(macro over users per split, as Table 1), the number of splits, the tuned − official paired
difference of Overall (mean, and how many splits it is positive on), and how often the tuned
run chose each candidate (0 = the official setting).
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pandas as pd

from bench.store import ResultsStore


def main(root: str) -> None:
    rows, metas, problems = ResultsStore(root).load()
    for p in problems:
        print("warn:", p)
    choice = {}
    for m in metas:
        if "tuning" in m:
            c = m["cell"]
            choice[(c["dataset"], c["method"], c["seed"])] = (m["tuning"]["chosen_index"], m["tuning"]["changed"])
    rows = rows[rows["n_test"] > 0]
    per = []
    for (ds, meth, seed), g in rows.groupby(["dataset", "method", "split_seed"]):
        s, u = g[g["seen"]], g[~g["seen"]]
        per.append({"dataset": ds, "method": meth, "seed": seed, "overall": g["accuracy"].mean(),
                    "seen": s["accuracy"].mean(), "unseen": u["accuracy"].mean()})
    per = pd.DataFrame(per)
    for ds, d in per.groupby("dataset"):
        print(f"\n## {ds}\n")
        print("| method | splits | Overall | Seen | Unseen | tuned − official (Overall) | choices |")
        print("|---|---|---|---|---|---|---|")
        for meth in sorted(d["method"].unique(), key=lambda m: (m.replace("@tuned", ""), m)):
            g = d[d["method"] == meth].sort_values("seed")
            f = lambda c: f"{g[c].mean() * 100:.1f} ± {g[c].std(ddof=1) * 100:.1f}" if len(g) > 1 else f"{g[c].mean() * 100:.1f}"  # noqa: E731
            diff, ch = "", ""
            if meth.endswith("@tuned"):
                base = d[d["method"] == meth[: -len("@tuned")]].set_index("seed")["overall"]
                t = g.set_index("seed")["overall"]
                common = t.index.intersection(base.index)
                if len(common):
                    dd = (t[common] - base[common]).to_numpy()
                    diff = f"{dd.mean() * 100:+.2f} ({int((dd > 0).sum())}/{len(dd)} splits > 0)"
                cnt = Counter(choice.get((ds, meth, int(s)), (None, ""))[0] for s in g["seed"])
                ch = ", ".join(f"c{k}×{v}" for k, v in sorted(cnt.items(), key=lambda kv: str(kv[0])))
            print(f"| {meth} | {len(g)} | {f('overall')} | {f('seen')} | {f('unseen')} | {diff} | {ch} |")
    print("\nchosen configurations:")
    for (ds, meth, seed), (i, changed) in sorted(choice.items()):
        print(f"  {ds} {meth} seed {seed}: c{i} {changed or '(official)'}")


if __name__ == "__main__":
    main(sys.argv[1])

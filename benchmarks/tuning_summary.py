"""Summarise official vs METHOD@tuned cells of a results directory (docs/tuning.md).

    python benchmarks/tuning_summary.py RESULTS_DIR

Per dataset and method: Overall / Seen / Unseen accuracy, mean ± std over the splits present
(macro over users per split, as Table 1), the number of splits, the tuned − official paired
difference of Overall (mean, and how many splits it is positive on), and how often the tuned
run chose each candidate (0 = the official setting). Then the verdicts with the calibrated
statistics (`bench compare`'s crossed users × splits t, Holm over each dataset's comparisons):
tuned − official per method, MRM's per-user step (`mrm` − `mrm-no-adapt`) under official and
tuned settings, and the Overall ranking under each.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np
import pandas as pd

from bench.store import ResultsStore, latest_per_split


def main(root: str) -> None:
    rows, metas, problems = ResultsStore(root).load()
    for p in problems:
        print("warn:", p)
    choice = {}
    for m in metas:
        if "tuning" in m:
            c = m["cell"]
            choice[(c["dataset"], c["method"], c["seed"])] = (m["tuning"]["chosen_index"], m["tuning"]["changed"])
    rows, dropped = latest_per_split(rows, metas)  # a split recomputed under new method code counts once
    if dropped:
        print(f"note: {dropped} older cell(s) of a split that was recomputed under a new key left out")
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
    verdicts(rows)
    print("\nchosen configurations:")
    for (ds, meth, seed), (i, changed) in sorted(choice.items()):
        print(f"  {ds} {meth} seed {seed}: c{i} {changed or '(official)'}")


def verdicts(rows: pd.DataFrame) -> None:
    from bench.commands.compare import select
    from bench.comparison import compare
    from bench.errors import BenchError
    from bench.stats import holm

    print("\n## Verdicts (Overall, crossed users × splits t, 95% CI, Holm within a dataset)\n")
    print("| dataset | A − B | splits | A − B (points) | 95% CI | p | p Holm |")
    print("|---|---|---|---|---|---|---|")
    for ds in sorted(set(rows["dataset"])):
        methods = set(rows.loc[rows["dataset"] == ds, "method"])
        pairs = [(m, m[: -len("@tuned")]) for m in sorted(methods) if m.endswith("@tuned") and m[: -6] in methods]
        pairs += [(a, b) for a, b in (("mrm", "mrm-no-adapt"), ("mrm@tuned", "mrm-no-adapt@tuned"))
                  if a in methods and b in methods]
        found = []
        for a, b in pairs:
            try:
                ra, rb, va, vb, _, _ = select(rows, a, b, ds)
            except BenchError as e:
                print(f"| {ds} | {a} − {b} | – | {e} | | | |")
                continue
            found.append((a, b, compare(ra, rb, va, vb, metric="overall")))
        adj = holm([c.pvalue for _, _, c in found])
        for (a, b, c), ph in zip(found, adj):
            cr = c.crossed
            ci = f"[{cr.ci_low * 100:+.2f}, {cr.ci_high * 100:+.2f}]" if cr.ok else cr.note
            pv = f"{cr.pvalue:.3g}" if cr.ok else "–"
            print(f"| {ds} | {a} − {b} | {c.n_splits} | {c.diff * 100:+.2f} | {ci} | {pv} | "
                  f"{ph:.3g}{' *' if ph < 0.05 else ''} |")
    print("\nOverall ranking (mean over the splits each method has):")
    for ds in sorted(set(rows["dataset"])):
        d = rows[rows["dataset"] == ds]
        acc = d.groupby(["method", "split_seed"])["accuracy"].mean().groupby("method").mean()
        for label, keep in (("official", lambda m: not m.endswith("@tuned")), ("tuned", lambda m: m.endswith("@tuned"))):
            r = acc[[keep(m) for m in acc.index]].sort_values(ascending=False)
            print(f"  {ds} {label}: " + " > ".join(f"{m.replace('@tuned', '')} {v * 100:.1f}" for m, v in r.items()))


if __name__ == "__main__":
    main(sys.argv[1])

"""Measure the constants of `bench run --plan`'s cost model (bench/plan.py): seconds ≈ a + b · work.

For each method, one fit group (fit + adapt + score, exactly the engine's views via
``bench.runner.run_single``) runs at two loop lengths — its iteration parameter (epochs, steps,
iterations) at ``--lo`` and ``--hi`` times the configured value (at least 1 and 2) — each in a fresh
subprocess; the time measured is the fit group's own (torch imported and the dataset loaded
before the clock starts: a run pays those once, in its preparing phase). From the two
points: b = (t_hi − t_lo) / (w_hi − w_lo), a = t_lo − b · w_lo (both clipped at 0). Then a third
run at ``--check`` times the configured value is predicted from (a, b) and measured: the ratio
measured / predicted is printed per method (how far the linear model is off).

    python benchmarks/plan_costs.py                          # every method with a cost model
    python benchmarks/plan_costs.py --methods bt,gpo --write # and rewrite bench/plan_costs.py

One JSON line per measurement, then a summary table. The machine is shared: quote `uptime`.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ITER_PARAMS = {  # the loop length each method's cost scales with
    "bt": ["iterations"], "lore": ["iterations", "adapt_iterations"], "mrm": ["epochs"],
    "mrm-no-meta": ["epochs"], "mrm-no-rpo": ["epochs"], "mrm-no-adapt": ["epochs"], "mrm-no-basis": ["epochs"],
    "pal": ["epochs", "adapt_epochs"], "pal-b": ["epochs", "adapt_epochs"], "vpl": ["epochs"], "gpo": ["steps"],
    "oracle": [], "rm": [],
}
# (lo, hi, check) factors where the defaults would round to one loop length or run for minutes
FACTORS = {"vpl": (0.5, 1.0, 0.0), "gpo": (0.02, 0.06, 0.1), "pal": (0.05, 0.1, 0.0), "pal-b": (0.05, 0.1, 0.0)}


def one(method: str, dataset: str, factor: float, shots, unseen) -> dict:
    """Run one fit group in this process; return seconds and work."""
    from bench.config import resolve_params
    from bench.datasets import load_dataset
    from bench.plan import _sizes, work
    from bench.registry import load_method
    from bench.runner import run_single

    ds = load_dataset(dataset)
    cls = load_method(method)
    params = resolve_params(cls, ds.family, {}, dataset=ds.name)
    for k in ITER_PARAMS.get(method, []):
        if k in params:
            params[k] = max(1, int(round(params[k] * factor)))
    if method == "gpo":
        params["eval_every"] = max(1, int(params["steps"]) // 10 or 1)
    dim = int(ds.features.dim) if ds.features is not None else 1
    n_fit, n_sup, n_test = _sizes(ds, 0, 0.5, shots, unseen, None)
    w = work(method, params, n_fit, n_sup, n_test, dim)
    import torch  # noqa: F401 - imported once per worker, not per fit group

    t0 = time.perf_counter()
    run_single(cls(**params), ds, seed=0, shots=shots, unseen_shots=unseen)
    return {"method": method, "dataset": dataset, "factor": factor, "params": {k: params[k] for k in ITER_PARAMS.get(method, []) if k in params},
            "work": w, "seconds": time.perf_counter() - t0, "n_fit": n_fit, "n_support": n_sup, "n_test": n_test, "dim": dim}


def child(argv: list[str]) -> None:
    method, dataset, factor, shots, unseen = argv
    conv = lambda v: None if v == "all" else int(v)  # noqa: E731
    print(json.dumps(one(method, dataset, float(factor), conv(shots), conv(unseen))))


def measure(method: str, dataset: str, factor: float, shots: str, unseen: str, threads: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OPENBLAS_NUM_THREADS=str(threads))
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", method, dataset, str(factor), shots, unseen],
                         capture_output=True, text=True, env=env, check=False)
    if out.returncode != 0:
        raise RuntimeError(f"{method} ×{factor}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    rec = json.loads(out.stdout.strip().splitlines()[-1])
    rec["process_s"] = time.perf_counter() - t0  # with the imports a worker pays
    print(json.dumps(rec), flush=True)
    return rec


def fit(records: list[dict]) -> tuple[dict, list]:
    """(a, b) per method from its runs: the two shortest loops give the line, a third checks it."""
    by: dict[str, list[dict]] = {}
    for r in records:
        by.setdefault(r["method"], []).append(r)
    costs, rows = {}, []
    for m, recs in by.items():
        recs = sorted(recs, key=lambda r: r["work"])
        recs = [r for i, r in enumerate(recs) if i == 0 or r["work"] > recs[i - 1]["work"]]  # one run per loop length
        lo, hi = recs[0], recs[1] if len(recs) > 1 else recs[0]
        t_lo, t_hi = lo["seconds"], hi["seconds"]
        b = max(0.0, (t_hi - t_lo) / (hi["work"] - lo["work"])) if hi["work"] > lo["work"] else 0.0
        a = max(0.0, t_lo - b * lo["work"])
        if b == 0.0 and hi["work"] > lo["work"]:  # noise made the slope vanish: all time per unit work
            a, b = 0.0, t_hi / hi["work"]
        ratio = recs[2]["seconds"] / (a + b * recs[2]["work"]) if len(recs) > 2 else None
        costs[m] = {"a": round(a, 3), "b": float(f"{b:.4g}")}
        rows.append((m, a, b, t_lo, t_hi, ratio))
    return costs, rows


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2:])
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--methods", default=",".join(ITER_PARAMS))
    ap.add_argument("--dataset", default="synthetic-prism")
    ap.add_argument("--shots", default="all")
    ap.add_argument("--unseen-shots", default="10")
    ap.add_argument("--lo", type=float, default=0.05)
    ap.add_argument("--hi", type=float, default=0.15)
    ap.add_argument("--check", type=float, default=0.3, help="third run, predicted from (a, b) and measured (0: none)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--write", action="store_true", help="write the constants to bench/plan_costs.py")
    ap.add_argument("--from-log", nargs="+", default=None, metavar="FILE",
                    help="fit the constants from the JSON lines of earlier runs of this script (nothing runs)")
    args = ap.parse_args()
    load = os.getloadavg()
    records: list[dict] = []
    if args.from_log:
        for path in args.from_log:
            for line in open(path):
                if line.startswith("{") and '"seconds"' in line:
                    records.append(json.loads(line))
    for m in [x.strip() for x in args.methods.split(",") if x.strip()] if not args.from_log else []:
        f_lo, f_hi, f_ck = FACTORS.get(m, (args.lo, args.hi, args.check))
        factors = [f_lo] + ([f_hi] if ITER_PARAMS.get(m) else []) + ([f_ck] if f_ck and args.check and ITER_PARAMS.get(m) else [])
        for f in factors:
            try:
                records.append(measure(m, args.dataset, f, args.shots, args.unseen_shots, args.threads))
            except RuntimeError as e:
                print(json.dumps({"method": m, "error": str(e)}), flush=True)
                break
    costs, rows = fit(records)
    print(f"\nload average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}; {os.cpu_count()} CPUs; {args.threads} threads")
    print(f"{'method':<14} {'a (s)':>8} {'b (s/work)':>12} {'t_lo':>7} {'t_hi':>7} {'check meas/pred':>16}")
    for m, a, b, tl, th, r in rows:
        print(f"{m:<14} {a:>8.2f} {b:>12.3g} {tl:>7.1f} {th:>7.1f} {'' if r is None else f'{r:.2f}':>16}")
    if args.write:
        from pathlib import Path

        path = Path(__file__).resolve().parent.parent / "bench" / "plan_costs.py"
        old = {}
        if path.exists():
            import ast

            tree = ast.parse(path.read_text())
            found = [n.value for n in tree.body if isinstance(n, ast.Assign)
                     and any(getattr(t, "id", None) == "COSTS" for t in n.targets)]
            costs_old = ast.literal_eval(found[0]) if found else {}
            old = {k: v for k, v in costs_old.items() if k != "_machine"}
        old.update(costs)
        note = (f"measured {time.strftime('%Y-%m-%d')} on {os.cpu_count()} CPUs, {args.threads} threads, "
                f"load {load[0]:.1f}, {args.dataset}")
        body = json.dumps({"_machine": {"note": note}, **dict(sorted(old.items()))}, indent=4)
        path.write_text(
            '"""Built-in constants of the plan\'s cost model (bench/plan.py): seconds ≈ a + b · work per fit group.\n\n'
            "Generated by ``python benchmarks/plan_costs.py --write`` — do not edit by hand; rerun it on your\n"
            'machine for estimates that fit it. Cells stored in a results directory recalibrate ``b``."""\n\n'
            f"COSTS = {body}\n".replace("null", "None")
        )
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

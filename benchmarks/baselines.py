"""Time and peak memory per split of embedding-space methods at PRISM scale and Reddit scale.

    python benchmarks/baselines.py --methods lore,pal --scales prism,reddit --splits 3

Each (method, scale) runs in its own subprocess, so peak memory is that method's own. The child
fits, adapts and scores the method on ``--splits`` split seeds exactly as ``bench run`` does (same
views, the dataset's default budgets, the method's configured parameters for the dataset family)
and prints one JSON line per split with the time of each stage, then one line with its memory:

* ``peak_rss_gib`` — the kernel's high-water mark of resident memory (VmHWM), which includes the
  pages of the memory-mapped feature file the method touched;
* ``peak_anon_gib`` — the highest anonymous (heap) resident memory, sampled every 20 ms.
  ``anon_over_features`` = (peak − heap after loading the dataset and importing torch) / size of
  the feature array: what the method materialised, against the project's bound of 2×.

The parent prints every line and a summary: median seconds per split and the projection to 20
splits (the paper's protocol). ``cpu_s`` is the child's CPU time for the split (all threads):
less sensitive than wall time to other jobs on a shared machine. Datasets come from ``BENCH_CACHE`` (generated on first use).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import threading
import time

SCALES = {
    # ~640 seen users with all their train pairs, D = 4096
    "prism": {"dataset": "synthetic-prism", "shots": "default", "unseen_shots": "default"},
    # 20 seen users × 100 train pairs, unseen users adapt on 50, ~1,900 test pairs per user
    "reddit": {"dataset": "synthetic-reddit", "shots": "default", "unseen_shots": "default"},
    # the paper's other Reddit setting (150 examples per seen user)
    "reddit150": {"dataset": "synthetic-reddit", "shots": 150, "unseen_shots": "default"},
}


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


class _AnonSampler(threading.Thread):
    def __init__(self, every: float = 0.02):
        super().__init__(daemon=True)
        self.every, self.peak, self.stop = every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak = max(self.peak, _status_kib("RssAnon"))
            time.sleep(self.every)


def child(method: str, scale: str, seeds: list[int], params: dict) -> None:
    """Run one method at one scale in this process and print JSON lines."""
    import numpy as np

    from bench.config import resolve_params
    from bench.datasets import load_dataset
    from bench.registry import load_method
    from bench.runner import RunConfig, make_context, pair_view, query_view, resolve_budgets
    from bench.splits import make_split

    spec = SCALES[scale]
    ds = load_dataset(spec["dataset"])
    cfg = RunConfig(methods=[method], dataset=spec["dataset"], seeds=seeds, results=".", shots=spec["shots"])
    shots, unseen = resolve_budgets(cfg, ds)
    if spec["shots"] != "default":
        shots = int(spec["shots"])
    cls = load_method(method)
    kw = resolve_params(cls, ds.family, params)
    import torch  # noqa: F401  (every feature read converts through torch: count its heap in the baseline)

    ds.features.take(np.arange(2))
    sampler = _AnonSampler()
    sampler.start()
    base_anon = _status_kib("RssAnon")
    for seed in seeds:
        split = make_split(ds, seed)
        ctx = make_context(ds, seed)
        m = cls(**kw)
        c0 = time.process_time()
        t0 = time.perf_counter()
        m.fit(pair_view(ds, split, split.budget_mask(shots, 0) & split.seen[split.user_index]), ctx)
        t1 = time.perf_counter()
        m.adapt(pair_view(ds, split, split.budget_mask(shots, unseen[0])))
        t2 = time.perf_counter()
        q, a_is_chosen = query_view(ds, split, ~split.train, with_truth="oracle" in cls.requires)
        margin = np.asarray(m.score(q), dtype=np.float64)
        t3 = time.perf_counter()
        cpu = time.process_time() - c0
        acc = float(np.mean((margin > 0) == a_is_chosen)) if margin.ndim == 1 else None
        print(json.dumps({
            "method": method, "scale": scale, "dataset": ds.name, "seed": seed, "shots": shots, "unseen_shots": unseen[0],
            "fit_s": round(t1 - t0, 2), "adapt_s": round(t2 - t1, 2), "score_s": round(t3 - t2, 2),
            "split_s": round(t3 - t0, 2), "cpu_s": round(cpu, 2), "n_queries": len(q), "pair_accuracy": acc,
        }), flush=True)
        del m
    sampler.stop.set()
    sampler.join()
    feat = ds.features.nbytes if ds.features is not None else 0
    print(json.dumps({
        "method": method, "scale": scale, "memory": True,
        "peak_rss_gib": round(_status_kib("VmHWM") / 2**20, 3),
        "peak_anon_gib": round(sampler.peak / 2**20, 3),
        "anon_at_start_gib": round(base_anon / 2**20, 3),
        "features_gib": round(feat / 2**30, 3),
        "anon_over_features": round((sampler.peak - base_anon) * 1024 / feat, 2) if feat else None,
    }), flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="lore,pal")
    ap.add_argument("--scales", default="prism,reddit", help=f"comma list of {sorted(SCALES)}")
    ap.add_argument("--splits", type=int, default=3, help="split seeds 0..N-1 per (method, scale)")
    ap.add_argument("--param", action="append", default=[], help="METHOD.KEY=VALUE override (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads in the child (default: torch's)")
    ap.add_argument("--child", nargs=2, metavar=("METHOD", "SCALE"), help=argparse.SUPPRESS)
    args = ap.parse_args()

    params: dict[str, dict] = {}
    for item in args.param:
        lhs, value = item.split("=", 1)
        m, key = lhs.split(".", 1)
        import yaml

        params.setdefault(m, {})[key] = yaml.safe_load(value)

    if args.child:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        method, scale = args.child
        child(method, scale, list(range(args.splits)), params.get(method, {}))
        return

    rows = []
    for scale in args.scales.split(","):
        if scale not in SCALES:
            raise SystemExit(f"unknown scale {scale!r}; choose from {sorted(SCALES)}")
        for method in args.methods.split(","):
            cmd = [sys.executable, __file__, "--child", method, scale, "--splits", str(args.splits)]
            cmd += [f"--param={p}" for p in args.param]
            if args.threads:
                cmd += ["--threads", str(args.threads)]
            t0 = time.perf_counter()
            p = subprocess.run(cmd, capture_output=True, text=True)
            if p.returncode != 0:
                sys.stderr.write(p.stderr)
                raise SystemExit(f"{method} at {scale} scale failed ({p.returncode})")
            for line in p.stdout.splitlines():
                if line.startswith("{"):
                    print(line, flush=True)
                    rows.append(json.loads(line))
            rows.append({"method": method, "scale": scale, "process_s": round(time.perf_counter() - t0, 1)})

    print(f"\nsummary (cpus={os.cpu_count()}, load average at end {os.getloadavg()[0]:.1f}; a shared machine is noisy)")
    print(f"{'method':<10} {'scale':<10} {'median s/split':>15} {'fit':>7} {'adapt':>7} {'score':>7} {'cpu s':>7} {'20 splits (min)':>16} {'peak RSS GiB':>13} {'anon/features':>14}")
    for scale in args.scales.split(","):
        for method in args.methods.split(","):
            splits = [r for r in rows if r.get("method") == method and r.get("scale") == scale and "split_s" in r]
            mem = next((r for r in rows if r.get("method") == method and r.get("scale") == scale and r.get("memory")), {})
            if not splits:
                continue
            med = statistics.median(r["split_s"] for r in splits)
            part = {k: statistics.median(r[k] for r in splits) for k in ("fit_s", "adapt_s", "score_s", "cpu_s")}
            print(
                f"{method:<10} {scale:<10} {med:>15.1f} {part['fit_s']:>7.1f} {part['adapt_s']:>7.1f} {part['score_s']:>7.1f} {part['cpu_s']:>7.1f} "
                f"{20 * med / 60:>16.1f} {mem.get('peak_rss_gib', float('nan')):>13.2f} {mem.get('anon_over_features', float('nan')):>14}"
            )


if __name__ == "__main__":
    main()

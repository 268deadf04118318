"""Time and peak memory per split of the embedding-space baselines at PRISM and Reddit scale.

    python benchmarks/baselines.py --methods vpl,gpo --scale prism --repeats 3
    python benchmarks/baselines.py --methods vpl,gpo --scale reddit --repeats 3

Each method runs in a fresh child process (so its memory is its own) on split seeds
0..repeats-1 of the built-in synthetic preset at D = 4,096, with the method's configured
parameters for the dataset's family, through exactly the engine's views (the same fit / support /
query views as ``bench run``). Per split it reports fit, adapt and score wall time, and per method
the peak *anonymous* resident memory (RssAnon, sampled every 20 ms) next to the size of the
float16 feature matrix — the memory-mapped feature file itself is page cache, not the method's;
"the method's" share is the peak minus what the process held before ``fit`` (interpreter,
torch, the dataset's tables). Each split line also records the 1-minute load average.
The projected full run is 20 × the median split time plus the measured one-off start-up (dataset
open, imports). The machine is shared: quote medians and say so.

Scales: ``prism`` = synthetic-prism (1,287 users, ~640 seen, all train pairs as budget);
``reddit`` = synthetic-reddit with 100 seen shots and 50 unseen shots (20 seen users × 100
pairs, ~1,900 test pairs per user).
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
    "prism": {"dataset": "synthetic-prism", "shots": None, "unseen_shots": None},
    "reddit": {"dataset": "synthetic-reddit", "shots": 100, "unseen_shots": 50},
}


class AnonPeak:
    """Peak RssAnon of this process, sampled in a background thread (Linux)."""

    def __init__(self, every: float = 0.02):
        self.every = every
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def now() -> int:
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("RssAnon:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.every)

    def __enter__(self):
        self.peak = self.now()
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self.now())


def child(method: str, scale: str, repeats: int, dataset: str | None, params: dict, threads: int | None) -> None:
    t_start = time.perf_counter()
    from bench.config import resolve_params
    from bench.datasets import load_dataset
    from bench.registry import load_method
    from bench.runner import make_context, pair_view, query_view
    from bench.splits import load_or_create_split

    sc = SCALES[scale]
    ds = load_dataset(dataset or sc["dataset"])
    cls = load_method(method)
    p = resolve_params(cls, ds.family, params)
    import torch  # import cost belongs to start-up, not to the first split

    if threads:
        torch.set_num_threads(threads)

    base_anon = AnonPeak.now()
    startup = time.perf_counter() - t_start
    print(json.dumps({"event": "start", "method": method, "dataset": ds.name, "params": p, "startup_s": round(startup, 2),
                      "features_gib": round(ds.features.nbytes / 2**30, 3), "threads": torch.get_num_threads()}), flush=True)
    for seed in range(repeats):
        split = load_or_create_split(None, ds, seed, 0.5)
        ctx = make_context(ds, seed)
        m = cls(**p)
        with AnonPeak() as mem:
            t0 = time.perf_counter()
            m.fit(pair_view(ds, split, split.budget_mask(sc["shots"], 0) & split.seen[split.user_index]), ctx)
            t1 = time.perf_counter()
            m.adapt(pair_view(ds, split, split.budget_mask(sc["shots"], sc["unseen_shots"])))
            t2 = time.perf_counter()
            q, a_is_chosen = query_view(ds, split, ~split.train, with_truth="oracle" in cls.requires)
            margin = m.score(q)
            t3 = time.perf_counter()
        acc = float((((margin > 0) == a_is_chosen) & (margin != 0)).mean())
        load = os.getloadavg()[0]
        print(json.dumps({"event": "split", "method": method, "seed": seed, "fit_s": round(t1 - t0, 2), "adapt_s": round(t2 - t1, 2),
                          "score_s": round(t3 - t2, 2), "total_s": round(t3 - t0, 2), "n_queries": len(q),
                          "peak_anon_gib": round(mem.peak / 2**30, 3), "anon_before_gib": round(base_anon / 2**30, 3),
                          "pair_accuracy": round(acc, 4), "loadavg_1min": round(load, 2)}), flush=True)
        del m


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="vpl,gpo")
    ap.add_argument("--scale", choices=sorted(SCALES), default="prism")
    ap.add_argument("--repeats", type=int, default=3, help="split seeds to time (median reported)")
    ap.add_argument("--dataset", default=None, help="override the preset (e.g. a smaller spec for a dry run)")
    ap.add_argument("--param", action="append", default=[], help="method.key=value override (repeatable)")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (as `bench run --threads`); default: torch's")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()

    overrides: dict[str, dict] = {}
    for item in args.param:
        key, _, value = item.partition("=")
        meth, _, k = key.partition(".")
        try:
            v = json.loads(value)
        except json.JSONDecodeError:
            v = value
        overrides.setdefault(meth, {})[k] = v

    if args.child:
        child(args.child, args.scale, args.repeats, args.dataset, overrides.get(args.child, {}), args.threads)
        return

    for method in args.methods.split(","):
        cmd = [sys.executable, __file__, "--child", method, "--scale", args.scale, "--repeats", str(args.repeats)]
        if args.dataset:
            cmd += ["--dataset", args.dataset]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        for item in args.param:
            if item.startswith(method + "."):
                cmd += ["--param", item]
        t0 = time.perf_counter()
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ))
        wall = time.perf_counter() - t0
        if out.returncode != 0:
            sys.stderr.write(out.stderr)
            raise SystemExit(f"{method} failed ({out.returncode})")
        lines = [json.loads(x) for x in out.stdout.splitlines() if x.startswith("{")]
        for x in lines:
            print(json.dumps(x), flush=True)
        start = next(x for x in lines if x["event"] == "start")
        splits = [x for x in lines if x["event"] == "split"]
        med = {k: statistics.median(s[k] for s in splits) for k in ("fit_s", "adapt_s", "score_s", "total_s")}
        peak = max(s["peak_anon_gib"] for s in splits)
        extra = max(s["peak_anon_gib"] - s["anon_before_gib"] for s in splits)
        loads = [s["loadavg_1min"] for s in splits]
        projected = 20 * med["total_s"] + start["startup_s"]
        print(
            f"{method} @ {args.scale} ({start['dataset']}, {len(splits)} splits, {os.cpu_count()} cpus, "
            f"{start['threads']} torch threads, shared machine): median per split fit {med['fit_s']:.1f} s, "
            f"adapt {med['adapt_s']:.1f} s, score {med['score_s']:.1f} s, total {med['total_s']:.1f} s; "
            f"projected 20 splits {projected / 60:.1f} min; peak anonymous memory {peak:.2f} GiB, of which the "
            f"method's {extra:.2f} GiB = {extra / max(start['features_gib'], 1e-9):.2f}× the feature matrix "
            f"({start['features_gib']:.2f} GiB, float16); load average {min(loads):.1f}–{max(loads):.1f}; child wall {wall:.0f} s",
            flush=True,
        )


if __name__ == "__main__":
    main()

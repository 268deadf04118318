"""Wall time and peak memory of `bench run` on the built-in benchmark.

    python benchmarks/core.py --dataset synthetic-reddit --methods bt --repeats 20 --runs 3

Phases, each in a fresh subprocess so peak RSS is its own: (1) dataset generation into an
empty cache (skipped with --warm-cache), (2) `bench run` into an empty results directory,
(3) the same command again (everything served from the store). Peak RSS comes from wait4's
rusage of that child; it includes the pages of the memory-mapped feature file it touched.
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


def timed(cmd: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = p.stdout.read()
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    code = os.waitstatus_to_exitcode(status)
    if code != 0:
        sys.stderr.write(out.decode(errors="replace"))
        raise SystemExit(f"command failed ({code}): {' '.join(cmd)}")
    return wall, ru.ru_maxrss / 1024**2, code  # ru_maxrss is KiB on Linux → GiB


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", default="synthetic-reddit")
    ap.add_argument("--methods", default="bt")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--runs", type=int, default=1, help="repeat the cold run this many times (median reported)")
    ap.add_argument("--extra", nargs="*", default=[], help="extra arguments for bench run")
    ap.add_argument("--warm-cache", action="store_true", help="use the existing BENCH_CACHE (no generation phase)")
    args = ap.parse_args()

    env = dict(os.environ)
    results = []
    if not args.warm_cache:
        env["BENCH_CACHE"] = tempfile.mkdtemp(prefix="bench-cache-")
        gen = [sys.executable, "-c", f"from bench.datasets import load_dataset; load_dataset({args.dataset!r})"]
        wall, rss, _ = timed(gen, env)
        results.append({"phase": "generate", "dataset": args.dataset, "wall_s": round(wall, 2), "peak_rss_gib": round(rss, 3)})
        print(json.dumps(results[-1]), flush=True)
    run = [sys.executable, "-m", "bench", "run", "--methods", args.methods, "--dataset", args.dataset,
           "--repeats", str(args.repeats), "--no-table", *args.extra]
    cold = []
    for i in range(args.runs):
        res = tempfile.mkdtemp(prefix="bench-results-")
        wall, rss, _ = timed([*run, "--results", res], env)
        cold.append((wall, rss))
        results.append({"phase": "run", "i": i, "wall_s": round(wall, 2), "peak_rss_gib": round(rss, 3)})
        print(json.dumps(results[-1]), flush=True)
    wall, rss, _ = timed([*run, "--results", res], env)
    results.append({"phase": "resume", "wall_s": round(wall, 2), "peak_rss_gib": round(rss, 3)})
    print(json.dumps(results[-1]), flush=True)
    med = statistics.median(w for w, _ in cold)
    print(
        f"\n{args.methods} on {args.dataset}, {args.repeats} splits: median cold run {med:.1f} s "
        f"(max peak RSS {max(r for _, r in cold):.2f} GiB) over {args.runs} run(s); resume {wall:.1f} s; "
        f"cpus={os.cpu_count()}"
    )


if __name__ == "__main__":
    main()

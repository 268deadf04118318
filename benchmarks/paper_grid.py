"""The two hour-scale measurements of issue 17, for a quiet machine: wall time and peak memory of

1. ``bench paper --datasets synthetic --repeats 10`` (every installed method) — target ≤ 60 min;
2. ``bench run --methods all --dataset synthetic-reddit --shots 100`` (20 splits).

    python benchmarks/paper_grid.py                      # both, into fresh temporary directories
    python benchmarks/paper_grid.py --only paper --jobs 2
    python benchmarks/paper_grid.py --max-load 0.5       # refuse to start on a busy machine

Each command runs in a fresh subprocess (peak RSS from ``wait4``: the largest single process of
the tree that was waited for; worker processes report their own, printed by ``bench`` in its
log). Before starting, the script checks the 1-minute load average against ``--max-load``
(default 1.0 on this 2-core machine) and refuses, since a number measured under someone else's
load is not the idle figure the issue asks for (``--force`` runs anyway and labels the result).
The load average is sampled every 30 s during each run; its maximum (which includes the run's
own one or two busy processes) is printed with the result.
Datasets come from BENCH_CACHE: generate them beforehand (``bench paper --plan`` does) so the
first run does not time dataset generation.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _bench() -> list[str]:
    return [sys.executable, "-m", "bench"]


def timed(cmd: list[str], log: Path) -> dict:
    peak = [os.getloadavg()[0]]
    stop = threading.Event()

    def sample():
        while not stop.wait(30):
            peak[0] = max(peak[0], os.getloadavg()[0])

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.perf_counter()
    with open(log, "w") as fh:
        p = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT)
        _, status, ru = os.wait4(p.pid, 0)
    wall = time.perf_counter() - t0
    stop.set()
    code = os.waitstatus_to_exitcode(status)
    # children's CPU too (workers are waited for by bench itself)
    ch = __import__("resource").getrusage(__import__("resource").RUSAGE_CHILDREN)
    return {"cmd": " ".join(cmd[2:]), "exit": code, "wall_min": round(wall / 60, 2),
            "cpu_min": round((ch.ru_utime + ch.ru_stime) / 60, 2),
            "peak_rss_gib_main": round(ru.ru_maxrss / 2**20, 2),
            "peak_rss_gib_any_child": round(ch.ru_maxrss / 2**20, 2),
            "load_max": round(peak[0], 2), "log": str(log)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", choices=("paper", "reddit"), default=None)
    ap.add_argument("--repeats", type=int, default=10, help="bench paper --repeats")
    ap.add_argument("--jobs", type=int, default=None, help="--jobs for both commands (default: bench's)")
    ap.add_argument("--results", default=None, help="parent directory for the results (default: a temporary one)")
    ap.add_argument("--max-load", type=float, default=1.0)
    ap.add_argument("--force", action="store_true", help="run even above --max-load (the result is labelled)")
    args = ap.parse_args()
    load = os.getloadavg()[0]
    if load > args.max_load and not args.force:
        raise SystemExit(f"load average {load:.2f} > --max-load {args.max_load}: the machine is busy; "
                         "wait for a quiet window or pass --force (the figures will be labelled as under load)")
    root = Path(args.results or tempfile.mkdtemp(prefix="bench-grid-"))
    root.mkdir(parents=True, exist_ok=True)
    jobs = ["--jobs", str(args.jobs)] if args.jobs else []
    runs = []
    if args.only in (None, "paper"):
        runs.append(("paper", _bench() + ["paper", "--datasets", "synthetic", "--repeats", str(args.repeats),
                                           "--results", str(root / "paper")] + jobs))
    if args.only in (None, "reddit"):
        runs.append(("reddit", _bench() + ["run", "--methods", "all", "--dataset", "synthetic-reddit", "--shots", "100",
                                            "--results", str(root / "reddit"), "--no-table"] + jobs))
    print(json.dumps({"start_load": round(load, 2), "cpus": os.cpu_count(), "results": str(root),
                      "forced": bool(args.force and load > args.max_load)}), flush=True)
    for name, cmd in runs:
        row = timed(cmd, root / f"{name}.log")
        row["name"] = name
        row["load_before"] = round(load, 2)  # load_max includes the run's own processes
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()

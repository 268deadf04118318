"""Seconds per split of each embedding method with and without one core kept busy.

    python benchmarks/load.py --methods bt,mrm,lore,vpl,gpo,pal --scale reddit --repeats 3
    python benchmarks/load.py --methods vpl,gpo --policy legacy     # torch's default threads

For every method, ``--repeats`` rounds of: one split in a fresh subprocess with nothing added
("quiet"), then the same split with a spinner — a process that busy-loops on one core (pinned to
the first CPU of this process's affinity mask) — running beside it ("spinner"). The child fits,
adapts and scores exactly as ``benchmarks/baselines.py`` does, after applying a thread policy:

* ``--policy bench`` (default): :func:`bench.threads.apply` — what ``bench run`` / ``bench paper``
  workers do (BLAS on the available cores, torch on one thread unless ``--threads``);
* ``--policy legacy``: nothing applied (BLAS and torch on every core: the behaviour before
  ``bench/threads.py``; PAL and mrm-no-basis pin themselves to one torch thread either way).

Prints one JSON line per run and a summary: median seconds per split quiet and with the spinner,
and their ratio (target ≤ 2). The machine's load average is printed with every line: "quiet" means
no spinner, not an idle machine — on a shared machine quote the load.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def spinner_main(cpu: int) -> None:  # pragma: no cover - a child process
    try:
        os.sched_setaffinity(0, {cpu})
    except (AttributeError, OSError):
        pass
    x = 0
    while True:
        x = (x + 1) % 1000003


def child_main(method: str, scale: str, seed: int, policy: str, threads: int | None, params: dict) -> None:
    if policy == "bench":
        from bench.threads import apply

        apply(threads)
    sys.path.insert(0, str(HERE))
    import baselines

    baselines.child(method, scale, [seed], params)


def _run_child(args, method: str, seed: int, spin: bool) -> dict:
    cmd = [sys.executable, __file__, "--child", method, "--scale", args.scale, "--seed", str(seed),
           "--policy", args.policy] + [f"--param={p}" for p in args.param]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    sp = None
    if spin:
        cpu = min(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 0
        sp = subprocess.Popen([sys.executable, __file__, "--spinner", str(cpu)])
        time.sleep(0.5)  # let it take its core
    load0 = _load()
    t0 = time.perf_counter()
    try:
        p = subprocess.run(cmd, capture_output=True, text=True)
    finally:
        if sp is not None:
            sp.terminate()
            sp.wait()
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr)
        raise SystemExit(f"{method} failed ({p.returncode})")
    split = next(json.loads(line) for line in p.stdout.splitlines() if line.startswith("{") and "split_s" in line)
    row = {"method": method, "scale": args.scale, "policy": args.policy, "spinner": spin, "seed": seed,
           "split_s": split["split_s"], "fit_s": split["fit_s"], "cpu_s": split["cpu_s"],
           "process_s": round(wall, 1), "load_start": load0, "load_end": _load()}
    print(json.dumps(row), flush=True)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--methods", default="bt,mrm,lore,vpl,gpo,pal")
    ap.add_argument("--scale", default="reddit", help="a scale of benchmarks/baselines.py (prism, reddit, reddit150)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of (quiet, spinner) per method")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--policy", choices=("bench", "legacy"), default="bench")
    ap.add_argument("--threads", type=int, default=None, help="--threads for the bench policy")
    ap.add_argument("--param", action="append", default=[], help="METHOD.KEY=VALUE override (repeatable)")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--spinner", type=int, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.spinner is not None:
        spinner_main(args.spinner)
        return
    params: dict[str, dict] = {}
    for item in args.param:
        import yaml

        lhs, value = item.split("=", 1)
        m, key = lhs.split(".", 1)
        params.setdefault(m, {})[key] = yaml.safe_load(value)
    if args.child:
        child_main(args.child, args.scale, args.seed, args.policy, args.threads, params.get(args.child, {}))
        return

    print(json.dumps({"cpus": os.cpu_count(), "affinity": len(os.sched_getaffinity(0)), "load": _load(),
                      "policy": args.policy, "scale": args.scale, "params": args.param}), flush=True)
    rows = []
    methods = args.methods.split(",")
    for r in range(args.repeats):
        for method in methods:
            rows.append(_run_child(args, method, args.seed, spin=False))
            rows.append(_run_child(args, method, args.seed, spin=True))
    print(f"\nsummary: policy {args.policy}, scale {args.scale}, {args.repeats} round(s); "
          f"load average now {_load():.1f}")
    print(f"{'method':<14}{'quiet s':>9}{'spinner s':>11}{'ratio':>7}{'quiet cpu':>11}{'load':>12}")
    for method in methods:
        q = [x for x in rows if x["method"] == method and not x["spinner"]]
        s = [x for x in rows if x["method"] == method and x["spinner"]]
        mq, ms = statistics.median(x["split_s"] for x in q), statistics.median(x["split_s"] for x in s)
        loads = [x["load_start"] for x in q + s]
        print(f"{method:<14}{mq:>9.1f}{ms:>11.1f}{ms / mq:>7.2f}{statistics.median(x['cpu_s'] for x in q):>11.1f}"
              f"{min(loads):>6.1f}–{max(loads):<5.1f}")


if __name__ == "__main__":
    main()

"""``bench paper``: plan, run what is missing, and render every table and figure of the paper.

    bench paper                                  # built-in synthetic benchmark, 20 splits
    bench paper --repeats 10 --out paper-out     # fewer splits
    bench paper --render-only                    # re-render from stored results (seconds)
    bench paper --datasets prism reddit          # real data, once features are extracted
    bench paper --smoke                          # tiny data, a few minutes: a quick end-to-end check
"""

from __future__ import annotations

import time
from pathlib import Path


def add_parser(sub) -> None:
    p = sub.add_parser(
        "paper",
        help="run the missing cells of the paper's tables and figures and render them into one folder",
        description="Plan every cell the paper's outputs need (configs/experiments/paper.yaml), run the "
        "missing ones (resumable), and render tables, figures and an index.",
    )
    p.add_argument("--datasets", nargs="+", default=["synthetic"],
                   help="dataset choices from the experiment file's `sources` (default: synthetic; real: prism reddit)")
    p.add_argument("--repeats", type=int, default=None, help="splits per output (default: the experiment file's, 20)")
    p.add_argument("--outputs", default=None, help="only these outputs, e.g. table1,fig3 (default: all)")
    p.add_argument("--config", default="paper", help="experiment name in configs/experiments/ or a YAML path")
    p.add_argument("--smoke", action="store_true", help="tiny datasets and the methods' test_params (a few minutes: 3.5 min on 2 busy cores)")
    p.add_argument("--results", default="results", help="results directory (default ./results)")
    p.add_argument("--out", default=None, help="output folder (default RESULTS/paper, or RESULTS/paper-smoke with --smoke)")
    p.add_argument("--render-only", action="store_true", help="do not run anything; render from stored results")
    p.add_argument("--plan", action="store_true", help="print the plan (jobs, cells, skipped methods) and stop")
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=None, help="BLAS and torch threads per worker (default: CPUs ÷ jobs)")
    from bench.cli import add_executor_args

    add_executor_args(p)
    p.set_defaults(handler=run)


def run(args) -> int:
    from bench.cli import _console
    from bench.errors import BenchError
    from bench.experiments import build_plan, execute, load_experiment
    from bench.reports.paper import render_all

    console = _console()
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    if args.repeats is not None and args.repeats < 1:
        raise BenchError(f"--repeats must be ≥ 1, got {args.repeats}")
    cfg = load_experiment(args.config, smoke=args.smoke)
    outputs = [o.strip() for o in args.outputs.split(",") if o.strip()] if args.outputs else None
    results = Path(args.results)
    out = Path(args.out) if args.out else results / ("paper-smoke" if args.smoke else "paper")
    t0 = time.perf_counter()
    plan = build_plan(cfg, args.datasets, repeats=args.repeats, outputs=outputs)
    from bench.text import plural

    say(f"plan: {plural(len(plan.outputs), 'output')}, {plural(len(plan.keys), 'cell')} in {plural(len(plan.jobs), 'job')}"
        + (f", {len(plan.analyses)} analyses" if plan.analyses else "") + f" ({time.perf_counter() - t0:.1f} s)")
    for n in plan.notes:
        say(f"note: {n}")
    if args.plan:
        for j in plan.jobs:
            say(f"  job: {j.describe()} × {len(j.seeds)} splits → {len(j.keys)} cells for {', '.join(j.outputs)}")
        for name, reasons in plan.skipped.items():
            for r in reasons:
                say(f"  {name}: skipped {r}")
        return 0

    failed = 0
    known = None
    if not args.render_only:
        from bench.store import ResultsStore

        ResultsStore(results).ensure_writable()
        import sys

        from bench.cli import _isatty
        from bench.runview import RunView, progress_every

        view = RunView(console, tty=_isatty(sys.stdout), every_s=progress_every(), jobs=args.jobs,
                       preparing="preparing: loading the data, making splits, checking stored cells")
        seen_lines: set[str] = set()

        def log(m: str) -> None:  # every job loads the same dataset: say its line once, not once per job
            if m in seen_lines:
                return
            seen_lines.add(m)
            view.log(m)

        with view:
            from bench.cli import execution_options, make_executor_from_args
            from bench.determinism import deterministic_mode

            with deterministic_mode(args.deterministic), make_executor_from_args(args, log=log) as executor:
                summary = execute(plan, results, progress=view.cells, log=log, device=args.device, threads=args.threads,
                                  executor=executor, retries=args.retries, options=execution_options(args),
                                  deterministic=args.deterministic)
        if summary["interrupted"]:
            from bench.clihelp import interrupted_code

            code, word = interrupted_code()
            say(f"{word}: finished cells are kept in {results}; rerun the same command to continue")
            return code
        failed = len(summary["failed"]) + sum(len(a["failed"]) for a in summary["analyses"])
        known = summary["stored"]
        say(f"{plural(summary['ran'], 'cell')} computed in {plural(summary['jobs'], 'job')}" + (f", {failed} failed" if failed else ""))
    t1 = time.perf_counter()
    index = render_all(plan, results, out, log=say, known=known)
    say(f"rendered in {time.perf_counter() - t1:.1f} s → {index}")
    return 1 if failed else 0

"""The ``bench`` command line.

Verbs: ``run`` (compute missing cells, print the Table-1 block), ``list`` (methods and datasets
with their capabilities), ``report`` (tables from stored results, terminal + LaTeX) and ``card``
(a method's card). Errors caused by input print a message and a fix, never a traceback.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from bench import __version__
from bench.errors import BenchError

DEFAULT_RESULTS = "results"

# Further verbs live in their own modules (bench/commands/<verb>.py), each exposing
# ``add_parser(subparsers)`` and ``run(args) -> int``; list them here.
EXTRA_VERBS: list[str] = ["bench.commands.embed", "bench.commands.compare", "bench.commands.paper"]


def _console(stderr: bool = False):
    """A console as wide as the terminal; without one, COLUMNS or 80 columns for tables, and plain
    text is not hard-wrapped (a message in a log file stays one line)."""
    from rich.console import Console

    stream = sys.stderr if stderr else sys.stdout
    tty = _isatty(stream)
    return Console(stderr=stderr, highlight=False, soft_wrap=not tty and not _columns_env(), width=_term_width(stream))


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError, OSError):
        return False


def _columns_env() -> int | None:
    try:
        n = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        return None
    return n if n > 0 else None


def _term_width(stream=None) -> int:
    stream = stream or sys.stdout
    if _isatty(stream):
        try:
            return os.get_terminal_size(stream.fileno()).columns
        except (OSError, ValueError, AttributeError):
            pass
    return _columns_env() or 80


def default_repeats(spec: str) -> int:
    """Splits when neither --repeats nor --seeds is given: the dataset config's ``repeats`` (a
    small offline benchmark may ask for fewer than the paper's 20), else 20."""
    from bench.config import dataset_config
    from bench.datasets import is_path_spec, parse_spec

    if is_path_spec(spec):
        return 20
    try:
        return int(dataset_config(parse_spec(spec)[0]).get("repeats", 20))
    except (BenchError, TypeError, ValueError):
        return 20


def parse_seeds(repeats: int | None, seeds: str | None, default: int = 20) -> list[int]:
    if seeds:
        out: list[int] = []
        for part in seeds.split(","):
            part = part.strip()
            if not part:
                continue
            try:
                if "-" in part:
                    a, b = part.split("-", 1)
                    out.extend(range(int(a), int(b) + 1))
                else:
                    out.append(int(part))
            except ValueError:
                raise BenchError(f"--seeds '{seeds}' is not a list like 0-4,7", hint="non-negative integers and ranges, e.g. --seeds 0-4,7") from None
        if not out or min(out) < 0:
            raise BenchError(f"--seeds '{seeds}' must list non-negative integers", hint="e.g. --seeds 0-4,7")
        return sorted(set(out))
    n = default if repeats is None else repeats
    if n < 1:
        raise BenchError(f"--repeats must be ≥ 1, got {n}", hint="e.g. --repeats 5")
    return list(range(n))


def _integer(text: str) -> int:
    """An integer (range checks happen later, with a one-line message and a fix)."""
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if not v.is_integer():
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer")
    return int(v)


def _positive_int(text: str) -> int:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if not v.is_integer() or v < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return int(v)


def add_executor_args(p: argparse.ArgumentParser, llm: bool = True) -> None:
    """The flags that choose where cells run (shared by ``run`` and ``paper``)."""
    g = p.add_argument_group("execution (see docs/scaling.md)")
    g.add_argument("--jobs", type=_positive_int, default=1,
                   help="parallel workers: local processes, or the CPUs of a local Ray instance (default 1: in this process)")
    g.add_argument("--executor", choices=["local", "ray"], default=None,
                   help="local processes (default) or Ray tasks (one fit group per task; needs bench-prm[ray])")
    g.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="run on this Ray cluster, e.g. ray://head:10001 or auto (implies --executor ray)")
    g.add_argument("--retries", type=int, default=1, help="re-runs of a fit group whose worker died (default 1), then its cells fail")
    g.add_argument("--deterministic", action="store_true",
                   help="torch's deterministic algorithms in every worker (GPU runs; CUBLAS_WORKSPACE_CONFIG=:4096:8, no cuDNN "
                        "autotuning); recorded in each cell's provenance, not part of its key")
    if llm:
        g.add_argument("--llm-replicas", type=_positive_int, default=None,
                       help="with --executor ray: engine replicas (Ray actors) that share an LLM method's requests")


def make_executor_from_args(args, log=None):
    """The executor ``add_executor_args`` flags ask for (close it when done)."""
    from bench.executors import make_executor

    kind = args.executor or ("ray" if args.ray_address else "local")
    if args.retries < 0:
        raise BenchError(f"--retries must be ≥ 0, got {args.retries}")
    if getattr(args, "llm_replicas", None) and kind != "ray":
        raise BenchError("--llm-replicas needs --executor ray", hint="add --executor ray (a local Ray instance) or --ray-address ADDR")
    return make_executor(kind, jobs=args.jobs, threads=args.threads, ray_address=args.ray_address,
                         device=getattr(args, "device", "cpu") or "cpu", log=log)


def execution_options(args) -> dict:
    """Context options that the execution flags imply (read by methods, never part of a cell key)."""
    n = getattr(args, "llm_replicas", None)
    return {"llm_replicas": n} if n else {}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench",
        description="Benchmark personalized reward models under one user-split protocol.",
    )
    p.add_argument("--version", action="version", version=f"bench {__version__}")
    sub = p.add_subparsers(dest="verb", metavar="VERB")

    r = sub.add_parser("run", help="run the missing cells of methods × splits and print the Table-1 block")
    r.add_argument("--methods", default="bt,oracle",
                   help="comma-separated method names, 'all', or all but some: all,-gpo (default: bt,oracle)")
    r.add_argument("--dataset", default="synthetic-prism", help="a dataset name, NAME:key=value,…, or a directory")
    r.add_argument("--shots", default="default", help="max train pairs per seen user: N or 'all' (default: the dataset's)")
    r.add_argument(
        "--unseen-shots",
        default="default",
        help="max support pairs per unseen user: M, 'all', or a list like 5,10,50 (a few-shot curve)",
    )
    r.add_argument("--repeats", type=_integer, default=None, help="number of splits, seeds 0..N-1 (default 20, or the dataset's `repeats`)")
    r.add_argument("--seeds", default=None, help="explicit split seeds, e.g. 0-4,10 (overrides --repeats)")
    r.add_argument("--seen-ratio", type=float, default=0.5, help="fraction of users that are seen (default 0.5)")
    r.add_argument("--param", action="append", default=[], metavar="[METHOD.]KEY=VALUE", help="override a method parameter")
    r.add_argument("--test-fraction", type=float, default=None, help="score a fixed random fraction of each user's test pairs")
    r.add_argument("--results", default=DEFAULT_RESULTS, help=f"results directory (default ./{DEFAULT_RESULTS})")
    r.add_argument("--plan", "--dry-run", dest="plan", action="store_true",
                   help="print the cells and a time estimate per method, then stop (nothing runs or is written)")
    r.add_argument("--device", default="cpu", help="torch device for methods (cpu, cuda, cuda:1)")
    r.add_argument("--threads", type=_positive_int, default=None,
                   help="BLAS and torch threads per worker (default: all CPUs for --jobs 1, else CPUs ÷ jobs)")
    r.add_argument("--no-table", action="store_true", help="do not print the table at the end")
    r.add_argument("--tune", action="store_true",
                   help="tune every method on validation data from seen users' train halves (METHOD@tuned; docs/tuning.md)")
    add_executor_args(r)

    ls = sub.add_parser("list", help="list methods and datasets with their capabilities")
    ls.add_argument("--json", action="store_true", help="machine-readable output")

    rep = sub.add_parser("report", help="render Table-1 style results from a results directory")
    rep.add_argument("--results", default=DEFAULT_RESULTS,
                     help=f"the results directory `bench run --results` wrote (default ./{DEFAULT_RESULTS})")
    rep.add_argument("--dataset", default=None, help="only this dataset (name as stored)")
    rep.add_argument("--methods", default=None, help="only these methods (comma-separated)")
    rep.add_argument("--latex", default=None, help="write the LaTeX table to this file (default RESULTS/reports/table1.tex)")

    c = sub.add_parser("card", help="print a method's card (paper, official code, settings, deviations)")
    c.add_argument("method")
    for module in EXTRA_VERBS:
        import importlib

        importlib.import_module(module).add_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        parser.print_help()
        return 0
    handlers = {"run": cmd_run, "list": cmd_list, "report": cmd_report, "card": cmd_card}
    from bench.clihelp import handle_sigterm, restore_sigterm

    old_term = handle_sigterm()  # SIGTERM stops a run as Ctrl-C does: finished cells kept, claims released
    try:
        if args.verb in handlers:
            return handlers[args.verb](args)
        return args.handler(args)
    except BenchError as e:
        from rich.markup import escape

        err = _console(stderr=True)
        err.print(f"[bold red]error:[/bold red] {escape(e.message)}", markup=True)
        if e.hint:  # escaped: a hint like pip install 'bench-prm[ray]' must print its brackets
            err.print(f"  [bold]fix:[/bold] {escape(e.hint)}", markup=True)
        return 2
    except KeyboardInterrupt:
        from bench.clihelp import interrupted_code

        code, word = interrupted_code()
        print(f"\n{word}", file=sys.stderr)
        return code
    except BrokenPipeError:  # e.g. `bench card mrm | head`
        try:
            sys.stdout = open(os.devnull, "w")
        except OSError:
            pass
        return 0
    except OSError as e:  # a write no verb wrapped itself: a full disk or a read-only directory is no bug
        from bench.errors import STORAGE_ERRNOS, storage_error

        if e.errno not in STORAGE_ERRNOS:
            raise
        where = Path(e.filename).parent if e.filename else Path.cwd()
        err = storage_error(e, where, Path(e.filename).name if e.filename else "a file", "write somewhere else")
        _console(stderr=True).print(f"error: {err.message}\n  fix: {err.hint}", markup=False, highlight=False)
        return 2
    finally:
        restore_sigterm(old_term)


# ---------------------------------------------------------------------------- run


def cmd_run(args) -> int:
    from bench.clihelp import keep_results_clean

    with keep_results_clean(Path(args.results)):
        return _cmd_run(args)


def _cmd_run(args) -> int:
    from bench.clihelp import interrupted_code
    from bench.config import parse_overrides
    from bench.methodspec import is_all
    from bench.registry import expand_methods
    from bench.runner import RunConfig, parse_budget, run
    from bench.runview import RunView, progress_every
    from bench.text import plural

    console = _console()
    methods = expand_methods(args.methods)
    if getattr(args, "tune", False):  # every method as METHOD@tuned (bench/tuning.py)
        methods = list(dict.fromkeys(m if m.endswith("@tuned") else f"{m}@tuned" for m in methods))
    shots = "default" if args.shots == "default" else parse_budget(args.shots, "--shots")
    if args.unseen_shots == "default":
        unseen = "default"
    else:
        unseen = [parse_budget(x, "--unseen-shots", allow_zero=True) for x in str(args.unseen_shots).split(",") if x.strip()]
        if not unseen:
            raise BenchError("--unseen-shots is empty", hint="a number, 'all', or a list like 5,10,50")
    if args.test_fraction is not None and not 0 < args.test_fraction <= 1:
        raise BenchError(f"--test-fraction must be in (0, 1], got {args.test_fraction}", hint="e.g. --test-fraction 0.25, or leave it out to score every test pair")
    if not 0 < args.seen_ratio < 1:
        raise BenchError(f"--seen-ratio must be in (0, 1), got {args.seen_ratio}", hint="the fraction of users that are seen, e.g. --seen-ratio 0.5")
    bases = [m[: -len("@tuned")] for m in methods if m.endswith("@tuned")]  # --param mrm.x also sets mrm@tuned's anchor
    per_method, global_params = parse_overrides(args.param, list(dict.fromkeys(methods + bases)))
    cfg = RunConfig(
        methods=methods,
        dataset=args.dataset,
        seeds=parse_seeds(args.repeats, args.seeds, default_repeats(args.dataset)),
        results=Path(args.results),
        shots=shots,
        unseen_shots=unseen,
        seen_ratio=args.seen_ratio,
        params=per_method,
        global_params=global_params,
        test_fraction=args.test_fraction,
        device=args.device,
        threads=args.threads,
        skip_unavailable=is_all(args.methods),
        options=execution_options(args),
        deterministic=args.deterministic,
    )
    from bench import plan as planning

    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    if args.plan:
        if args.executor == "ray" or args.ray_address:
            raise BenchError("--plan with --executor ray is not supported", hint="leave the Ray flags out for the plan")
        say(f"preparing: loading {args.dataset} and counting its pairs per split")
        rp = planning.make_plan(cfg)
        say(rp.dataset_line)
        for line in planning.render(rp, cfg.results, jobs=args.jobs):
            say(line)
        return 0
    rp = None
    if args.executor != "ray" and not args.ray_address:
        try:
            rp = planning.make_plan(cfg)
        except Exception:  # noqa: BLE001 - the estimate is advice: the run itself reports any problem
            rp = None
    if rp is not None:
        warn = planning.warning(rp, jobs=args.jobs)
        if warn:
            say(warn)
    tty = _isatty(sys.stdout)
    view = RunView(console, tty=tty, every_s=progress_every(), estimates=rp.estimates() if rp else {}, jobs=args.jobs,
                   preparing="preparing: loading the data, making splits, checking stored cells")
    with view:
        from bench.determinism import deterministic_mode

        # also in this process while the workers start: they inherit CUBLAS_WORKSPACE_CONFIG
        with deterministic_mode(args.deterministic), make_executor_from_args(args, log=view.log) as executor:
            summary = run(cfg, progress=view.cells, log=view.log, executor=executor, retries=args.retries)

    for note in summary.notes:
        console.print(f"note: {note}", markup=False)
    if summary.interrupted:
        code, word = interrupted_code()
        console.print(
            f"{word}: {plural(summary.ran, 'cell')} finished and stored in {cfg.results}; rerun the same command to continue",
            markup=False,
        )
        return code
    elsewhere = f", {summary.elsewhere} computed by another run" if summary.elsewhere else ""
    console.print(f"{plural(summary.ran, 'cell')} computed, {summary.cached} served from {cfg.results}{elsewhere}", markup=False)
    if not args.no_table and summary.keys:
        _print_table(console, cfg.results, set(summary.keys))
    if summary.failed:
        console.print(f"[bold red]{plural(len(summary.failed), 'cell')} failed[/bold red]:")
        for f in summary.failed:
            console.print(f"  {f['method']} seed {f['seed']} ({f['stage']}): {f['error']}", markup=False)
        console.print(f"tracebacks: {Path(cfg.results) / 'cells'}/<key>.failed.json", markup=False)
        return 1
    return 0


def _print_table(console, results: Path, keys: set[str] | None = None) -> None:
    from bench.reports.tables import build_table, render_rich
    from bench.store import ResultsStore

    rows, _metas, problems = ResultsStore(results).load()
    for p in problems:
        console.print(f"[warn] {p}", markup=False)
    if keys is not None:
        rows = rows[rows["cell"].isin(keys)]
    if len(rows) == 0:
        return
    console.print(render_rich(build_table(rows)))


# ---------------------------------------------------------------------------- list / report / card


def cmd_list(args) -> int:
    from bench.datasets import describe_datasets
    from bench.registry import METHOD_GROUP, describe

    methods = []
    for info in describe(METHOD_GROUP):
        if info.error:
            methods.append({"name": info.name, "target": info.target, "error": info.error})
        else:
            cls = info.obj
            methods.append(
                {
                    "name": info.name,
                    "kind": getattr(cls, "kind", ""),
                    "requires": sorted(getattr(cls, "requires", [])),
                    "summary": getattr(cls, "summary", ""),
                }
            )
    datasets = describe_datasets()
    if args.json:
        print(json.dumps({"methods": methods, "datasets": datasets}, indent=1))
        return 0
    from rich.markup import escape
    from rich.table import Table

    console = _console()
    from bench.listing import WIDE, narrow_lines

    if console.width < WIDE:
        for line in narrow_lines(methods, datasets, console.width):
            console.print(line, markup=False, highlight=False)
    else:
        _list_tables(console, methods, datasets)
    console.print("A bring-your-own-data directory is also a dataset: --dataset path/to/dir", markup=False)
    broken = [x["name"] for x in methods + datasets if "error" in x]
    if broken:
        console.print(f"{len(broken)} plugin(s) failed to load and are unavailable: {', '.join(broken)} — "
                      "fix or uninstall them; everything else works", markup=False)
    return 0


def _list_tables(console, methods, datasets) -> None:
    from rich.markup import escape
    from rich.table import Table

    t = Table(title="Methods")
    for col in ("name", "kind", "requires", "description"):
        t.add_column(col)
    for m in methods:
        if "error" in m:
            t.add_row(m["name"], "[red]broken[/red]", "", f"[red]{escape(m['error'])}[/red] ({escape(m['target'])})")
        else:
            t.add_row(m["name"], m["kind"], ", ".join(m["requires"]), m["summary"])
    console.print(t)
    t = Table(title="Datasets")
    for col in ("name", "family", "split", "provides", "shots", "description"):
        t.add_column(col)
    for d in datasets:
        if "error" in d:
            t.add_row(d["name"], "[red]broken[/red]", "", "", "", f"[red]{escape(d['error'])}[/red] ({escape(d['target'])})")
            continue
        t.add_row(
            d["name"], d["family"], d["split_by"], ", ".join(d["provides"]), f"{d['shots']}/{d['unseen_shots']}", d["description"]
        )
    console.print(t)


def cmd_report(args) -> int:
    from bench.reports.tables import build_table, render_rich, to_latex
    from bench.store import ResultsStore

    store = ResultsStore(args.results)
    where = Path(args.results).resolve()
    make = "make some with `bench run --methods bt,oracle` (it writes to ./results), or pass --results DIR"
    if not store.cells_dir.exists():
        raise BenchError(f"no results in {where} (looked for {store.cells_dir}; it does not exist)", hint=make)
    rows, metas, problems = store.load()
    console = _console()
    for p in problems:
        console.print(f"[warn] {p} — it is left out; `bench run` recomputes it", markup=False)
    from bench.store import latest_per_split

    rows, superseded = latest_per_split(rows, metas)
    if superseded:
        console.print(f"[note] {superseded} older cell(s) of splits recomputed since (new method code) left out; "
                      "each split counts once", markup=False)
    if args.dataset:
        rows = rows[rows["dataset"] == args.dataset]
    if args.methods:
        keep = [m.strip() for m in args.methods.split(",")]
        rows = rows[rows["method"].isin(keep)]
    if len(rows) == 0 and not (args.dataset or args.methods):
        raise BenchError(f"no finished cells in {where / 'cells'}", hint=make)
    if len(rows) == 0:
        from bench.clihelp import stored_names

        raise BenchError(f"no results for {_filters(args)} in {where}", hint=stored_names(store))
    table = build_table(rows)
    console.print(render_rich(table))
    for (r, s), seeds in sorted(table.missing.items()):
        console.print(f"incomplete: {r} lacks {len(seeds)} of {table.expected[s]} splits of {s} "
                      f"(seeds {[int(x) for x in seeds]})", markup=False)
    out = Path(args.latex) if args.latex else Path(args.results) / "reports" / "table1.tex"
    out.parent.mkdir(parents=True, exist_ok=True)
    keys = sorted(rows["cell"].unique())
    from bench.hashing import hash_obj
    from bench.runner import environment

    env = environment()
    header = (
        f"% generated by bench {__version__} (git {env.get('git_commit') or 'unknown'}) from {len(keys)} cells\n"
        f"% run keys: {hash_obj(keys)}\n"
    )
    out.write_text(to_latex(table, header=header))
    console.print(f"LaTeX table written to {out}", markup=False)
    return 0


def _filters(args) -> str:
    parts = ([f"--dataset {args.dataset}"] if args.dataset else []) + ([f"--methods {args.methods}"] if args.methods else [])
    return " and ".join(parts)


def cmd_card(args) -> int:
    from bench.registry import load_method

    cls = load_method(args.method)
    text = cls.card()
    if not text:
        raise BenchError(f"method '{args.method}' has no card", hint=f"add {cls.card_path()}")
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

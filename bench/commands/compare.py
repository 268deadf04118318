"""``bench compare A B --dataset NAME``: is the difference between two methods real?

Prints, per metric, both methods' means over the paired splits, the difference A − B with its
confidence interval and two-sided p-value from the crossed users × splits t (every user is scored
on every split, so both the users' and the splits' variance count; docs/paper.md § Statistics),
the Holm adjustment over the printed metrics, and — for seen and unseen, where it holds its level —
the paper's Nadeau–Bengio corrected resampled t-test. The table fits an 80-column terminal.
"""

from __future__ import annotations

DEFAULT_METRICS = "seen,unseen,overall,overall_worst10,overall_worst20,overall_worst50"


def add_parser(sub) -> None:
    p = sub.add_parser("compare", help="paired significance test and CI of method A vs method B on stored results")
    p.add_argument("a", help="method A (a name, or a label like 'mrm[rho=0.1]' when it ran with several parameter sets)")
    p.add_argument("b", help="method B")
    p.add_argument("--dataset", required=True, help="dataset name as stored (e.g. synthetic-prism)")
    p.add_argument("--shots", default=None, help="seen users' budget of the setting (N or all), if several were run")
    p.add_argument("--unseen-shots", default=None, help="unseen users' budget of the setting (M or all)")
    p.add_argument("--features", default=None, help="feature model, when the dataset was run with several")
    p.add_argument("--metrics", default=DEFAULT_METRICS, help=f"comma-separated (default {DEFAULT_METRICS})")
    p.add_argument("--n-unit", default="users", choices=["users", "pairs"], help="how n is counted in the t-test correction")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--results", default="results")
    p.set_defaults(handler=run)


def _budget_of(text):
    from bench.runner import parse_budget

    return parse_budget(text, "--shots", allow_zero=True)


def select(rows, a: str, b: str, dataset: str, shots=None, unseen_shots=None, features=None):
    """Rows of A and B in one setting, its label and a note on how it was chosen among several."""
    import numpy as np
    import pandas as pd

    from bench.errors import BenchError, did_you_mean
    from bench.reports.tables import setting_label, variant_labels

    if dataset not in set(rows["dataset"]):
        raise did_you_mean(dataset, sorted(set(rows["dataset"])), "stored dataset")
    rows = rows[rows["dataset"] == dataset].copy()
    if features is not None:
        if features not in set(rows["features"]):
            raise did_you_mean(features, sorted(set(rows["features"])), "feature model")
        rows = rows[rows["features"] == features]
    none = lambda v: v is None or (isinstance(v, float) and np.isnan(v)) or v is __import__("pandas").NA  # noqa: E731
    rows["setting"] = [setting_label(dataset, s, u, t) for s, u, t in zip(rows["shots"], rows["unseen_shots"], rows["test_fraction"])]
    if shots is not None:
        want = _budget_of(shots)
        rows = rows[[(none(s) and want is None) or (not none(s) and int(s) == want) for s in rows["shots"]]]
    if unseen_shots is not None:
        want = _budget_of(unseen_shots)
        rows = rows[[(none(s) and want is None) or (not none(s) and int(s) == want) for s in rows["unseen_shots"]]]
    # Labels are per setting: parameters that differ only between settings do not split a method.
    rows["variant"] = variant_labels(rows)
    if rows.groupby("variant")["features"].nunique().max() > 1:
        multi = sorted(set(rows["features"]))
        raise BenchError(f"{dataset} was run with several feature models ({', '.join(multi)})",
                         hint="choose one with --features")

    def pick(name: str) -> str:
        labels = sorted(set(rows["variant"]))
        if name in labels:
            return name
        own = [v for v in labels if v.split("[", 1)[0] == name]
        if len(own) == 1:
            return own[0]
        if own:
            raise BenchError(f"'{name}' ran with several parameter sets on {dataset}: {', '.join(own)}",
                             hint="pass one of these labels (quoted)")
        raise did_you_mean(name, labels, "method")

    va, vb = pick(a), pick(b)
    if va == vb:
        raise BenchError("A and B are the same rows", hint="compare two different methods or parameter sets")
    both = sorted(set(rows.loc[rows["variant"] == va, "setting"]) & set(rows.loc[rows["variant"] == vb, "setting"]))
    if not both:
        raise BenchError(f"{va} and {vb} share no setting on {dataset}" + (" with those budgets" if shots or unseen_shots else ""),
                         hint="run both with the same --shots/--unseen-shots and seeds")
    chosen, note = both[0], ""
    if len(both) > 1:
        default = _default_setting(dataset)
        label = None if default is None else setting_label(dataset, *default)
        if label in both:
            chosen, why = label, "the dataset's Table 1 setting"
        else:
            # the setting with the most paired splits, then the largest budgets (the main result)
            def rank(setting):
                g = rows[rows["setting"] == setting]
                n = len(set(g.loc[g["variant"] == va, "split_seed"]) & set(g.loc[g["variant"] == vb, "split_seed"]))
                big = lambda v: float("inf") if pd.isna(v) else float(v)  # noqa: E731
                return n, big(g["shots"].iloc[0]), big(g["unseen_shots"].iloc[0])

            chosen = max(both, key=rank)
            why = "most paired splits, then the largest budgets"
        others = ", ".join(f"{_flags_of(rows, b)}" for b in both if b != chosen)
        note = f"{len(both)} shared settings; showing {chosen} ({why}). Others: {others}"
    rows = rows[rows["setting"] == chosen]
    return rows[rows["variant"] == va], rows[rows["variant"] == vb], va, vb, chosen, note


def _default_setting(dataset: str):
    """(shots, unseen_shots) of the dataset's own default run (its Table 1 setting), if it has one."""
    from bench.config import dataset_config

    try:
        cfg = dataset_config(dataset.split(":", 1)[0])
    except Exception:  # a bring-your-own dataset has no config: no default
        return None
    if not cfg:
        return None
    to = lambda v: None if v in (None, "all") else int(v)  # noqa: E731
    return to(cfg.get("shots", "all")), to(cfg.get("unseen_shots", cfg.get("shots", "all")))


def _flags_of(rows, setting: str) -> str:
    g = rows[rows["setting"] == setting].iloc[0]
    import pandas as pd

    txt = lambda v: "all" if pd.isna(v) else str(int(v))  # noqa: E731
    return f"--shots {txt(g['shots'])} --unseen-shots {txt(g['unseen_shots'])}"


def run(args) -> int:
    import numpy as np
    from rich import box
    from rich.markup import escape
    from rich.table import Table

    from bench.cli import _console
    from bench.comparison import compare, metric_label, nb_description, parse_metric
    from bench.errors import BenchError
    from bench.stats import holm
    from bench.store import ResultsStore

    metrics = [m.strip() for m in args.metrics.split(",") if m.strip()]
    for m in metrics:
        parse_metric(m)
    if not 0 < args.confidence < 1 or not 0 < args.alpha < 1:
        raise BenchError("--confidence and --alpha must be in (0, 1)")
    store = ResultsStore(args.results)
    if not store.cells_dir.exists():
        raise BenchError(f"no results in {args.results}", hint="run `bench run ...` first or pass --results DIR")
    rows, metas, problems = store.load()
    console = _console()
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    for p in problems:
        say(f"[warn] {p} — left out")
    from bench.store import latest_per_split

    rows, superseded = latest_per_split(rows, metas)
    if superseded:
        say(f"[note] {superseded} older cell(s) of splits recomputed since (new method code) left out; "
            "each split counts once")
    if len(rows) == 0:
        raise BenchError(f"no results in {args.results}", hint="run `bench run ...` first")
    ra, rb, va, vb, setting, chosen = select(rows, args.a, args.b, args.dataset, args.shots, args.unseen_shots,
                                             args.features)
    comps = [compare(ra, rb, va, vb, metric=m, n_unit=args.n_unit, confidence=args.confidence) for m in metrics]
    adj = holm([c.pvalue for c in comps])
    c0 = comps[0]
    S = c0.n_splits
    pct = round(args.confidence * 100)
    say(f"A = {va}")
    say(f"B = {vb}")
    if chosen:
        say(f"note: {chosen}")
    say(f"{setting}: accuracy (%), mean over {S} paired split{'s' if S != 1 else ''}, "
        f"{c0.crossed.n_users} users")
    t = Table(box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False, collapse_padding=True)
    for col in ("metric", "A", "B", "A − B", f"{pct}% CI", "p", "p Holm"):
        t.add_column(escape(col), justify="left" if col == "metric" else "right", no_wrap=True)
    notes = []
    for c, p in zip(comps, adj):
        cr = c.crossed
        if cr.ok:
            ci, pv = f"[{cr.ci_low * 100:+.2f}, {cr.ci_high * 100:+.2f}]", f"{cr.pvalue:.3g}"
            ph = f"{p:.3g}{' *' if p < args.alpha else ''}"
        else:
            ci, pv, ph = "no interval", "–", "–"
            notes.append(f"{metric_label(c.metric)}: {cr.note}")
        t.add_row(escape(metric_label(c.metric)), f"{c.a_values.mean() * 100:.2f}", f"{c.b_values.mean() * 100:.2f}",
                  f"{c.diff * 100:+.2f}", ci, pv, ph)
    console.print(t)
    if notes:
        for n in dict.fromkeys(notes):
            say(f"note: {n}")
    say(f"CI and p: crossed users × splits t (Satterthwaite df), two-sided; Holm over the {len(comps)} "
        f"metrics shown (* p_Holm < {args.alpha:g}). See docs/paper.md, Statistics.")
    nbs = [c for c in comps if c.nb is not None and np.isfinite(c.nb.pvalue)]
    if nbs:
        tt = nbs[0].nb
        say("Paper convention, corrected resampled t (Nadeau & Bengio 2003), seen/unseen only: "
            + ", ".join(f"{metric_label(c.metric)} p = {c.nb.pvalue:.3g}" for c in nbs)
            + f"; factor 1/S + n_test/n_train = {tt.factor:.3f}, {nb_description(args.n_unit)}.")
    if 1 < S < 10:
        say(f"warning: only {S} paired splits; the protocol asks for at least 10 for paired tests")
    if c0.only_a or c0.only_b:
        say(f"note: unpaired splits left out — only {va}: {c0.only_a or 'none'}; only {vb}: {c0.only_b or 'none'}")
    return 0

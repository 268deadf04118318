"""``bench compare A B --dataset NAME``: is the difference between two methods real?

Prints, per metric, both methods' means over the paired splits, the difference A − B with its
cluster-bootstrap confidence interval (users resampled within splits), the Nadeau–Bengio corrected
resampled t-test (the main test; how n is counted is printed), its Holm adjustment over the
printed metrics, and the Wilcoxon signed-rank test (Pratt) as a robustness check.
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
    p.add_argument("--boot", type=int, default=2000, help="bootstrap replicates (default 2000; 0 = none)")
    p.add_argument("--confidence", type=float, default=0.95)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--results", default="results")
    p.set_defaults(handler=run)


def _budget_of(text):
    from bench.runner import parse_budget

    return parse_budget(text, "--shots", allow_zero=True)


def select(rows, a: str, b: str, dataset: str, shots=None, unseen_shots=None, features=None):
    """Rows of A and B in one setting (errors name the choices when ambiguous)."""
    import numpy as np

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
    if len(both) > 1:
        raise BenchError(f"{va} and {vb} share several settings: {'; '.join(both)}",
                         hint="choose one with --shots and --unseen-shots")
    rows = rows[rows["setting"] == both[0]]
    return rows[rows["variant"] == va], rows[rows["variant"] == vb], va, vb, both[0]


def run(args) -> int:
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
    rows, _metas, problems = store.load()
    console = _console()
    for p in problems:
        console.print(f"[warn] {p} — left out", markup=False)
    if len(rows) == 0:
        raise BenchError(f"no results in {args.results}", hint="run `bench run ...` first")
    ra, rb, va, vb, setting = select(rows, args.a, args.b, args.dataset, args.shots, args.unseen_shots, args.features)
    comps = [compare(ra, rb, va, vb, metric=m, n_unit=args.n_unit, n_boot=args.boot, confidence=args.confidence,
                     seed=i) for i, m in enumerate(metrics)]
    adj = holm([c.ttest.pvalue for c in comps])
    c0 = comps[0]
    t = Table(title=f"{va} vs {vb} — {setting}: accuracy (%) over {c0.n_splits} paired splits")
    pct = round(args.confidence * 100)
    for col in ("metric", va, vb, "A − B", f"{pct}% CI (bootstrap)", f"{pct}% CI (corrected t)", "t (corrected)",
                "p", "p (Holm)", "Wilcoxon p"):
        t.add_column(col, justify="left" if col == "metric" else "right")
    for c, p in zip(comps, adj):
        bs = c.bootstrap
        ci = f"[{bs.ci_low * 100:+.2f}, {bs.ci_high * 100:+.2f}]" if bs is not None else "–"
        sig = " *" if p < args.alpha else ""
        tci = f"[{c.ttest.ci_low * 100:+.2f}, {c.ttest.ci_high * 100:+.2f}]"
        t.add_row(metric_label(c.metric), f"{c.a_values.mean() * 100:.2f}", f"{c.b_values.mean() * 100:.2f}",
                  f"{c.ttest.mean * 100:+.2f}", ci, tci, f"{c.ttest.statistic:.2f}", f"{c.ttest.pvalue:.3g}",
                  f"{p:.3g}{sig}", f"{c.wilcoxon.pvalue:.3g}")
    console.print(t)
    tt = c0.ttest
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    say(f"Corrected resampled t-test (Nadeau & Bengio 2003), two-sided, df = {tt.df}: variance factor "
        f"1/S + n_test/n_train = 1/{tt.n_splits} + {tt.n_test:g}/{tt.n_train:g} = {tt.factor:.3f}; {nb_description(args.n_unit)}.")
    say(f"Holm over the {len(comps)} metrics shown (* : p_Holm < {args.alpha:g}). Wilcoxon signed-rank, Pratt zeros "
        f"({c0.wilcoxon.method}; smallest attainable p with {c0.n_splits} splits: {c0.wilcoxon.min_pvalue:.2g}).")
    if args.boot:
        say(f"Bootstrap: {args.boot} replicates, users resampled within each split (seen/unseen strata kept), paired; "
            "it reflects which users were sampled, not which users a split made seen — the corrected-t interval "
            "covers that too and is usually the wider one.")
    if c0.n_splits < 10:
        say(f"warning: only {c0.n_splits} paired splits; the protocol asks for at least 10 for paired tests")
    if c0.only_a or c0.only_b:
        say(f"note: unpaired splits left out — only {va}: {c0.only_a or 'none'}; only {vb}: {c0.only_b or 'none'}")
    return 0

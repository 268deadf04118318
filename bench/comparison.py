"""Paired comparisons of two methods from stored per-user rows (docs/paper.md § Statistics).

This is where rows meet :mod:`bench.crossed`: the two methods' cells are aligned split by split
(same split seed *and* same split hash — otherwise they are not paired and the comparison
refuses) and user by user, each split's metric is computed from each method's own rows exactly as
in the tables, and the users × splits matrix of paired differences (per-user accuracy differences,
or worst-k pseudo-value differences) feeds the crossed users × splits t-interval and test. That
interval is the verdict: every user is scored on every split, so it counts both the users'
variance and the splits' variance (the calibration suite checks its level, tests/test_calibration.py).

The Nadeau–Bengio corrected resampled t-test (``p_nb``) is kept as the paper's convention, for the
seen and unseen populations only, where the simulation shows it holds its level (it is
conservative there); for Overall and worst-k it is not reported (every user is tested in every
split, so its ``n_test/n_train`` correction does not describe the design). How n is counted for it
(``n_unit``):

* ``"users"`` (default): ``n_train`` = seen users, ``n_test`` = unseen users of a split (averaged).
* ``"pairs"``: ``n_train`` = pairs that trained shared parameters (the seen users' train pairs
  within the budget), ``n_test`` = test pairs scored in the compared population.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
import pandas as pd

from bench.crossed import MIN_TAIL_USERS, CrossedResult, crossed_inference, tail_users, worst_k_pseudo
from bench.errors import BenchError
from bench.stats import TTestResult, corrected_resampled_ttest

N_UNITS = ("users", "pairs")
POPULATIONS = ("seen", "unseen", "overall")


def parse_metric(metric: str) -> tuple[str, float | None]:
    """``overall`` → ("overall", None); ``unseen_worst10`` → ("unseen", 0.10)."""
    pop, _, rest = metric.partition("_")
    if pop not in POPULATIONS:
        raise BenchError(
            f"unknown metric '{metric}'",
            hint="use seen, unseen, overall, or POP_worstK with K in 10, 20, 50 (e.g. overall_worst10)",
        )
    if not rest:
        return pop, None
    if not rest.startswith("worst"):
        raise BenchError(f"unknown metric '{metric}'", hint="e.g. overall_worst10")
    try:
        k = int(rest[len("worst"):])
    except ValueError:
        raise BenchError(f"unknown metric '{metric}'", hint="e.g. overall_worst10") from None
    if k not in (10, 20, 50):
        raise BenchError(f"metric '{metric}': worst-k is stored for k = 10, 20, 50 only")
    return pop, k / 100


def metric_label(metric: str) -> str:
    pop, k = parse_metric(metric)
    base = {"seen": "Seen", "unseen": "Unseen", "overall": "Overall"}[pop]
    return base if k is None else f"{base} worst {round(k * 100)}%"


@dataclass
class PairedComparison:
    a: str
    b: str
    metric: str
    seeds: list[int]
    a_values: np.ndarray  # split-level metric of A per seed
    b_values: np.ndarray
    crossed: CrossedResult  # the verdict: crossed users × splits t on the paired differences
    nb: TTestResult | None  # paper convention (seen / unseen only), else None
    n_unit: str
    only_a: list[int] = field(default_factory=list)  # seeds A has and B lacks
    only_b: list[int] = field(default_factory=list)

    @property
    def diffs(self) -> np.ndarray:
        return self.a_values - self.b_values

    @property
    def n_splits(self) -> int:
        return len(self.seeds)

    @property
    def diff(self) -> float:
        return float(np.mean(self.diffs)) if self.n_splits else float("nan")

    @property
    def pvalue(self) -> float:
        return self.crossed.pvalue

    def record(self) -> dict:
        """Flat dict (for CSV files of a table's tests)."""
        c, nb = self.crossed, self.nb
        nan = float("nan")
        share = c.share() if c.ok else {"users": nan, "splits": nan, "error": nan}
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "n_splits": self.n_splits,
            "n_users": c.n_users,
            "mean_a": float(np.mean(self.a_values)) if self.n_splits else nan,
            "mean_b": float(np.mean(self.b_values)) if self.n_splits else nan,
            "diff": self.diff,
            "ci_low": c.ci_low,
            "ci_high": c.ci_high,
            "se": c.se,
            "df": c.df,
            "t": c.statistic,
            "p": c.pvalue,
            "var_share_users": share["users"],
            "var_share_splits": share["splits"],
            "var_share_error": share["error"],
            "note": c.note,
            "p_nb": nb.pvalue if nb else nan,
            "nb_factor": nb.factor if nb else nan,
            "n_unit": self.n_unit,
            "n_train": nb.n_train if nb else nan,
            "n_test": nb.n_test if nb else nan,
        }


def _per_split(rows: pd.DataFrame) -> dict[int, pd.DataFrame]:
    return {int(s): g for s, g in rows.groupby("split_seed", sort=True)}


def n_counts(rows: pd.DataFrame, population: str, n_unit: str) -> tuple[float, float]:
    """(n_train, n_test) of one method's rows, averaged over its splits, in the stated unit."""
    if n_unit not in N_UNITS:
        raise BenchError(f"unknown n unit '{n_unit}'", hint=f"use one of {', '.join(N_UNITS)}")
    tr, te = [], []
    for _, g in rows.groupby("split_seed"):
        seen = g["seen"].to_numpy(dtype=bool)
        if n_unit == "users":
            tr.append(seen.sum())
            te.append((~seen).sum())
        else:
            tr.append(g["n_support"].to_numpy()[seen].sum())
            mask = {"seen": seen, "unseen": ~seen, "overall": np.ones_like(seen)}[population]
            te.append(g["n_test"].to_numpy()[mask].sum())
    return float(np.mean(tr)), float(np.mean(te))


def metric_value(seen: np.ndarray, acc: np.ndarray, population: str, k: float | None) -> float:
    """One split-level metric from one split's per-user rows (as bench.metrics.split_metrics)."""
    from bench.metrics import macro_mean, worst_k

    mask = {"seen": seen, "unseen": ~seen, "overall": np.ones_like(seen)}[population]
    return macro_mean(acc[mask]) if k is None else worst_k(acc[mask], k)


def user_split_matrix(rows: pd.DataFrame, metric: str, users: list | None = None) -> tuple[np.ndarray, list, list[int]]:
    """(N users × S splits) values of one method whose crossed macro mean is its reported metric.

    Accuracies for a macro mean, worst-k pseudo-values for a worst-k% mean; NaN where the user is
    outside the population on that split or has no test pairs."""
    pop, k = parse_metric(metric)
    seeds = sorted(int(s) for s in rows["split_seed"].unique())
    users = list(dict.fromkeys(rows["user"])) if users is None else users
    pos = {u: i for i, u in enumerate(users)}
    y = np.full((len(users), len(seeds)), np.nan)
    for j, s in enumerate(seeds):
        g = rows[rows["split_seed"] == s]
        seen = g["seen"].to_numpy(bool)
        mask = {"seen": seen, "unseen": ~seen, "overall": np.ones_like(seen)}[pop]
        idx = np.fromiter((pos[u] for u in g["user"]), dtype=np.int64, count=len(g))
        acc = g["accuracy"].to_numpy(np.float64)
        y[idx[mask], j] = acc[mask]
    if k is not None:
        y = worst_k_pseudo(y, k)
    return y, users, seeds


def level(rows: pd.DataFrame, metric: str, confidence: float = 0.95) -> CrossedResult:
    """Crossed interval for one method's metric (mean over splits), e.g. for a figure's band."""
    y, _, _ = user_split_matrix(rows, metric)
    return crossed_inference(y, confidence)


def compare(
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "overall",
    n_unit: str = "users",
    confidence: float = 0.95,
) -> PairedComparison:
    """Paired comparison of A and B (each: per-user rows of one variant in one setting)."""
    pop, k = parse_metric(metric)
    if n_unit not in N_UNITS:
        raise BenchError(f"unknown n unit '{n_unit}'", hint=f"use one of {', '.join(N_UNITS)}")
    sa, sb = _per_split(rows_a), _per_split(rows_b)
    seeds = sorted(set(sa) & set(sb))
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    key = metric if k is None else f"{pop}_worst{round(k * 100)}"
    av, bv, n_tr, n_te = [], [], [], []
    users = list(dict.fromkeys(pd.concat([sa[s]["user"] for s in seeds]))) if seeds else []
    pos = {u: i for i, u in enumerate(users)}
    ya = np.full((len(users), len(seeds)), np.nan)
    yb = ya.copy()
    for j, s in enumerate(seeds):
        ga, gb = sa[s], sb[s]
        ha, hb = set(ga["split_hash"].unique()), set(gb["split_hash"].unique())
        if ha != hb:
            raise BenchError(
                f"{a} and {b} are not paired on split {s}: their split hashes differ ({sorted(ha)} vs {sorted(hb)})",
                hint="compare cells of the same dataset, seen ratio and split seed (rerun one of them)",
            )
        # stored rows are in the split's user order; align otherwise (vectorised comparison, no object arrays)
        if len(ga) != len(gb) or not bool((ga["user"].values == gb["user"].values).all()):
            if len(ga) != len(gb) or set(ga["user"]) != set(gb["user"]):
                raise BenchError(f"{a} and {b} have different users on split {s}", hint="the cells are not paired")
            ga = ga.set_index("user").loc[gb["user"]].reset_index()
        seen = ga["seen"].to_numpy(bool)
        acc_a, acc_b = ga["accuracy"].to_numpy(np.float64), gb["accuracy"].to_numpy(np.float64)
        av.append(metric_value(seen, acc_a, pop, k))
        bv.append(metric_value(seen, acc_b, pop, k))
        mask = {"seen": seen, "unseen": ~seen, "overall": np.ones_like(seen)}[pop]
        idx = np.fromiter((pos[u] for u in gb["user"]), dtype=np.int64, count=len(gb))
        ya[idx[mask], j] = acc_a[mask]
        yb[idx[mask], j] = acc_b[mask]
        if n_unit == "users":
            n_tr.append(seen.sum())
            n_te.append((~seen).sum())
        else:
            n_tr.append(ga["n_support"].to_numpy()[seen].sum())
            n_te.append(ga["n_test"].to_numpy()[mask].sum())
    av_arr, bv_arr = np.asarray(av, dtype=np.float64), np.asarray(bv, dtype=np.float64)
    if k is not None:
        ya, yb = worst_k_pseudo(ya, k), worst_k_pseudo(yb, k)
    cr = crossed_inference(ya - yb, confidence)
    if k is not None and seeds:
        m = min(tail_users(int(n), k) for n in np.isfinite(ya).sum(0))
        if m < MIN_TAIL_USERS and cr.ok:
            cr = replace(cr, se=np.nan, df=np.nan, statistic=np.nan, pvalue=np.nan, ci_low=np.nan, ci_high=np.nan,
                         note=f"only {m} users in the worst {round(k * 100)}% (an interval needs at least "
                              f"{MIN_TAIL_USERS}; see docs/paper.md, Statistics)")
    nb = None
    if k is None and pop in ("seen", "unseen") and seeds:
        n_train, n_test = float(np.mean(n_tr)), float(np.mean(n_te))
        if n_train > 0:
            nb = corrected_resampled_ttest(av_arr - bv_arr, n_train, n_test, confidence=confidence)
    return PairedComparison(a, b, key, seeds, av_arr, bv_arr, cr, nb, n_unit, only_a, only_b)


def nb_description(n_unit: str) -> str:
    """One sentence for captions and printed output: how n is counted."""
    if n_unit == "users":
        return "n counted in users (n_train = seen users, n_test = unseen users of a split)"
    return "n counted in pairs (n_train = seen users' train pairs within budget, n_test = test pairs of the population)"

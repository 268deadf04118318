"""Paired comparisons of two methods from stored per-user rows.

This is where rows meet :mod:`bench.stats`: the two methods' cells are aligned split by split
(same split seed *and* same split hash — otherwise they are not paired and the comparison
refuses), each split's metric is computed from each method's own rows exactly as in the tables,
and the split-level differences feed the corrected t-test and the Wilcoxon test; the per-user
rows feed the cluster bootstrap.

**How n is counted for the Nadeau–Bengio correction** (``n_unit``):

* ``"users"`` (default): a split is a random partition of the users into a training part (the
  seen users, whose train halves fit the shared parameters) and a held-out part (the unseen
  users), so ``n_train`` = seen users and ``n_test`` = unseen users of the split (averaged over
  splits). At the paper's 50/50 split the variance factor is ``1/S + 1``.
* ``"pairs"``: ``n_train`` = pairs that trained shared parameters (the seen users' train pairs
  within the budget), ``n_test`` = test pairs scored in the compared population. Reddit-style
  settings have many test pairs per user, so this unit is far more conservative there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.stats import (
    BootstrapResult,
    resample_counts,
    TTestResult,
    WilcoxonResult,
    corrected_resampled_ttest,
    paired_cluster_bootstrap,
    wilcoxon_signed_rank,
)

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
    ttest: TTestResult
    wilcoxon: WilcoxonResult
    bootstrap: BootstrapResult | None
    n_unit: str
    only_a: list[int] = field(default_factory=list)  # seeds A has and B lacks
    only_b: list[int] = field(default_factory=list)

    @property
    def diffs(self) -> np.ndarray:
        return self.a_values - self.b_values

    @property
    def n_splits(self) -> int:
        return len(self.seeds)

    def record(self) -> dict:
        """Flat dict (for CSV files of a table's tests)."""
        t, w, bs = self.ttest, self.wilcoxon, self.bootstrap
        return {
            "a": self.a,
            "b": self.b,
            "metric": self.metric,
            "n_splits": self.n_splits,
            "mean_a": float(np.mean(self.a_values)) if self.n_splits else np.nan,
            "mean_b": float(np.mean(self.b_values)) if self.n_splits else np.nan,
            "diff": t.mean,
            "boot_ci_low": bs.ci_low if bs else np.nan,
            "boot_ci_high": bs.ci_high if bs else np.nan,
            "nb_ci_low": t.ci_low,
            "nb_ci_high": t.ci_high,
            "t": t.statistic,
            "df": t.df,
            "p_nb": t.pvalue,
            "nb_factor": t.factor,
            "n_unit": self.n_unit,
            "n_train": t.n_train,
            "n_test": t.n_test,
            "wilcoxon_stat": w.statistic,
            "p_wilcoxon": w.pvalue,
            "wilcoxon_method": w.method,
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


def _split_draws(seen: np.ndarray, n_boot: int, seed: int, split_seed: int, cache: dict | None) -> np.ndarray:
    key = ("split-draws", seed, int(split_seed), n_boot, seen.tobytes())
    c = cache.get(key) if cache is not None else None
    if c is None:
        c = resample_counts(seen.astype(np.int64), n_boot, np.random.default_rng([seed, int(split_seed)]))
        if cache is not None:
            cache[key] = c
    return c


def _population_draws(full: np.ndarray, sub: np.ndarray, pop: str, cache: dict | None) -> np.ndarray:
    key = ("pop-draws", id(full), pop)  # `full` lives in the cache, so its id is stable
    c = cache.get(key) if cache is not None else None
    if c is None:
        c = np.ascontiguousarray(full[:, sub])
        if cache is not None:
            cache[key] = c
    return c


def metric_value(seen: np.ndarray, acc: np.ndarray, population: str, k: float | None) -> float:
    """One split-level metric from one split's per-user rows (as bench.metrics.split_metrics)."""
    from bench.metrics import macro_mean, worst_k

    mask = {"seen": seen, "unseen": ~seen, "overall": np.ones_like(seen)}[population]
    return macro_mean(acc[mask]) if k is None else worst_k(acc[mask], k)


def compare(
    rows_a: pd.DataFrame,
    rows_b: pd.DataFrame,
    a: str,
    b: str,
    metric: str = "overall",
    n_unit: str = "users",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cache: dict | None = None,
) -> PairedComparison:
    """Paired comparison of A and B (each: per-user rows of one variant in one setting).

    ``cache`` (a dict) shares bootstrap draws between the comparisons of one table.
    """
    pop, k = parse_metric(metric)
    sa, sb = _per_split(rows_a), _per_split(rows_b)
    seeds = sorted(set(sa) & set(sb))
    only_a, only_b = sorted(set(sa) - set(sb)), sorted(set(sb) - set(sa))
    key = metric if k is None else f"{pop}_worst{round(k * 100)}"
    av, bv, ua, ub, draws, n_tr, n_te = [], [], [], [], [], [], []
    if n_unit not in N_UNITS:
        raise BenchError(f"unknown n unit '{n_unit}'", hint=f"use one of {', '.join(N_UNITS)}")
    for s in seeds:
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
        if n_boot > 0:
            # draws for the whole split (seen/unseen strata, users with test pairs); a population's
            # draws are its columns — a valid within-stratum resample — so all metrics share them
            ok = np.isfinite(acc_a) & np.isfinite(acc_b)
            full = _split_draws(seen[ok], n_boot, seed, s, cache)
            sub = mask[ok]
            cols = full if sub.all() else _population_draws(full, sub, pop, cache)
            draws.append(cols)
            ua.append(acc_a[ok][sub])
            ub.append(acc_b[ok][sub])
        if n_unit == "users":
            n_tr.append(seen.sum())
            n_te.append((~seen).sum())
        else:
            n_tr.append(ga["n_support"].to_numpy()[seen].sum())
            n_te.append(ga["n_test"].to_numpy()[mask].sum())
    av_arr, bv_arr = np.asarray(av, dtype=np.float64), np.asarray(bv, dtype=np.float64)
    n_train, n_test = (float(np.mean(n_tr)), float(np.mean(n_te))) if seeds else n_counts(rows_a, pop, n_unit)
    if not n_train > 0:
        n_train = float("nan")
    diffs = av_arr - bv_arr
    if np.isfinite(n_train):
        tt = corrected_resampled_ttest(diffs, n_train, n_test)
    else:
        nan = float("nan")
        tt = TTestResult(nan, nan, nan, 0, nan, nan, nan, len(diffs), nan, n_train, n_test)
    wx = wilcoxon_signed_rank(diffs)
    bs = None
    if n_boot > 0 and seeds:
        bs = paired_cluster_bootstrap(ua, ub, statistic="mean" if k is None else k, n_boot=n_boot,
                                      confidence=confidence, seed=seed, cache=cache, counts=draws)
    return PairedComparison(a, b, key, seeds, av_arr, bv_arr, tt, wx, bs, n_unit, only_a, only_b)


def nb_description(n_unit: str) -> str:
    """One sentence for captions and printed output: how n is counted."""
    if n_unit == "users":
        return "n counted in users (n_train = seen users, n_test = unseen users of a split)"
    return "n counted in pairs (n_train = seen users' train pairs within budget, n_test = test pairs of the population)"

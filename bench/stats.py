"""Significance and uncertainty for paired method comparisons (docs/paper.md § Statistics).

Pure functions on arrays; no data frames, no I/O. The verdicts (``bench compare``, the tables'
marks, the figures' bands) come from :mod:`bench.crossed`, which models users and splits as
crossed random factors; this module holds the split-level tests and helpers:

* :func:`corrected_resampled_ttest` — the paper's convention: Nadeau & Bengio's (2003) corrected
  resampled t-test over the S paired split-level differences. Splits reuse most of the same users,
  so their differences are positively correlated and the plain t-test's variance ``σ²/S`` is too
  small; the correction inflates it to ``(1/S + n_test/n_train)·σ²``. How ``n_train`` and
  ``n_test`` are counted is the caller's choice and must be stated with the result
  (:mod:`bench.comparison` counts users: seen users train, unseen users are held out).
* :func:`wilcoxon_signed_rank` — the robustness check, Pratt's treatment of zero differences
  (zeros are ranked, then their ranks dropped). Exact null distribution without ties or zeros;
  exact sign-flip enumeration with ties or zeros for S ≤ 13; otherwise the normal approximation
  with the tie and zero corrections and no continuity correction (the defaults of
  ``scipy.stats.wilcoxon``). With S
  splits the smallest two-sided exact p is ``2/2^S``: S = 5 can never reach 0.05.
* :func:`paired_cluster_bootstrap` — users resampled with replacement *within* each split, the
  statistic averaged over splits. **Not used for any verdict**: every split holds the same users,
  so averaging independent within-split resamples shrinks the interval by about √S (simulated
  coverage 0.37–0.90 for a nominal 0.95, ``python benchmarks/calibration.py``). Kept for that
  comparison and for callers that want one split's user-sampling spread.
* :func:`holm` — Holm's step-down adjustment over one family of p-values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np

__all__ = [
    "TTestResult",
    "WilcoxonResult",
    "BootstrapResult",
    "corrected_resampled_ttest",
    "wilcoxon_signed_rank",
    "paired_cluster_bootstrap",
    "holm",
    "worst_k_count",
    "resample_counts",
]


def _finite(x) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


# ---------------------------------------------------------------------------- Nadeau–Bengio


@dataclass(frozen=True)
class TTestResult:
    """Corrected resampled t-test of the mean paired difference (A − B) against 0."""

    mean: float  # mean split-level difference
    se: float  # corrected standard error sqrt((1/S + n_test/n_train)·var)
    statistic: float
    df: int
    pvalue: float
    ci_low: float
    ci_high: float
    n_splits: int
    factor: float  # 1/S + n_test/n_train
    n_train: float
    n_test: float
    alternative: str = "two-sided"


def corrected_resampled_ttest(
    diffs: Sequence[float] | np.ndarray,
    n_train: float,
    n_test: float,
    alternative: str = "two-sided",
    confidence: float = 0.95,
) -> TTestResult:
    """Nadeau & Bengio's corrected resampled t-test over paired split-level differences.

    ``diffs`` are the S split-level differences A − B (non-finite entries are dropped).
    ``n_train``/``n_test`` are the sizes of the training and held-out parts of one split in the
    unit the caller states (e.g. users). The statistic is ``mean / sqrt((1/S + n_test/n_train)·s²)``
    with ``s²`` the sample variance (ddof = 1), compared with Student's t on S − 1 degrees of
    freedom; with ``n_test = 0`` it is exactly the one-sample t-test.
    """
    # Student t through scipy.special's ufuncs (stdtr = CDF, stdtrit = quantile): the same numbers
    # as scipy.stats.t without its import and per-call overhead (a table makes hundreds of calls).
    from scipy.special import stdtr, stdtrit

    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    if not n_train > 0 or not n_test >= 0:
        raise ValueError(f"need n_train > 0 and n_test ≥ 0, got n_train={n_train}, n_test={n_test}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    d = _finite(diffs)
    s = len(d)
    nan = float("nan")
    factor = (1.0 / s if s else nan) + n_test / n_train
    if s < 2:
        mean = float(d.mean()) if s else nan
        return TTestResult(mean, nan, nan, max(s - 1, 0), nan, nan, nan, s, factor, n_train, n_test, alternative)
    mean = float(d.mean())
    var = float(d.var(ddof=1))
    se = math.sqrt(factor * var)
    df = s - 1
    if se == 0.0:
        # Every split gives the same difference: the split-to-split variance is zero, so this test
        # has nothing to say (neither "certain" nor "no effect"): statistic, p and interval are NaN
        # and callers report the case in words. (A constant non-zero difference is possible with
        # fixed halves and a deterministic method, e.g. the zero-shot reward model.)
        return TTestResult(mean, 0.0, nan, df, nan, nan, nan, s, factor, n_train, n_test, alternative)
    stat = mean / se
    if alternative == "two-sided":
        p = 2.0 * float(stdtr(df, -abs(stat)))
    elif alternative == "greater":
        p = float(stdtr(df, -stat))
    else:
        p = float(stdtr(df, stat))
    q = float(stdtrit(df, 0.5 + confidence / 2))
    return TTestResult(mean, se, stat, df, min(p, 1.0), mean - q * se, mean + q * se, s, factor, n_train, n_test, alternative)


# ---------------------------------------------------------------------------- Wilcoxon


@dataclass(frozen=True)
class WilcoxonResult:
    statistic: float  # two-sided: min(R+, R−); one-sided: R+
    pvalue: float
    r_plus: float
    r_minus: float
    n_splits: int
    n_zero: int
    method: str  # "exact", "exact sign-flip", "normal", or "degenerate"
    min_pvalue: float  # smallest p attainable with this many splits (exact methods)


def _average_ranks(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Average ranks (1-based) of x and the sizes of its tie groups."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    starts = np.r_[0, np.flatnonzero(np.diff(xs) != 0) + 1]
    sizes = np.diff(np.r_[starts, len(xs)])
    avg = starts + (sizes + 1) / 2.0  # mean of ranks starts+1 .. starts+size
    ranks = np.empty(len(x))
    ranks[order] = np.repeat(avg, sizes)
    return ranks, sizes


@lru_cache(maxsize=64)
def _signed_rank_pmf(n: int) -> np.ndarray:
    """Null distribution of R+ for ranks 1..n without ties: counts of subsets by sum / 2^n."""
    top = n * (n + 1) // 2
    counts = np.zeros(top + 1, dtype=np.float64)
    counts[0] = 1.0
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[: top + 1 - r].copy()
    return counts / 2.0**n


def wilcoxon_signed_rank(diffs: Sequence[float] | np.ndarray, alternative: str = "two-sided") -> WilcoxonResult:
    """Wilcoxon signed-rank test of paired differences against 0, zero method of Pratt."""
    from scipy.special import ndtr  # the normal CDF (importing scipy.stats costs seconds)

    if alternative not in ("two-sided", "greater", "less"):
        raise ValueError(f"alternative must be 'two-sided', 'greater' or 'less', got {alternative!r}")
    d = _finite(diffs)
    n = len(d)
    zero = d == 0
    n_zero = int(zero.sum())
    nan = float("nan")
    if n == 0:
        return WilcoxonResult(nan, nan, nan, nan, 0, 0, "degenerate", nan)
    ranks, sizes = _average_ranks(np.abs(d))
    r_plus = float(ranks[d > 0].sum())
    r_minus = float(ranks[d < 0].sum())
    statistic = min(r_plus, r_minus) if alternative == "two-sided" else r_plus
    # Zeros share the smallest |d|: if present they form the first tie group.
    nonzero_sizes = sizes[1:] if n_zero else sizes
    has_ties = bool((nonzero_sizes > 1).any())
    min_p = nan

    if not has_ties and n_zero == 0 and n <= 50:
        pmf = _signed_rank_pmf(n)
        cdf = lambda k: float(pmf[: int(k) + 1].sum())  # noqa: E731  P(T ≤ k)
        sf = lambda k: float(pmf[int(k):].sum())  # noqa: E731  P(T ≥ k)
        if alternative == "two-sided":
            p = 2 * min(sf(math.floor(r_plus)), cdf(math.ceil(r_plus)))
        elif alternative == "greater":
            p = sf(math.floor(r_plus))
        else:
            p = cdf(math.ceil(r_plus))
        method = "exact"
        min_p = (2.0 if alternative == "two-sided" else 1.0) / 2.0**n
    elif n <= 13:
        # Every assignment of signs is equally likely under H0 (zeros never count towards R+).
        signs = ((np.arange(2**n)[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
        positive = np.where(zero[None, :], False, signs)
        null = positive.astype(np.float64) @ ranks
        tol = abs(r_plus) * np.finfo(np.float64).eps * 100
        p_less = float(np.mean(null <= r_plus + tol))
        p_greater = float(np.mean(null >= r_plus - tol))
        p = {"two-sided": 2 * min(p_less, p_greater), "greater": p_greater, "less": p_less}[alternative]
        method = "exact sign-flip"
        min_p = (2.0 if alternative == "two-sided" else 1.0) / 2.0 ** (n - n_zero) if n > n_zero else 1.0
    else:
        mn = n * (n + 1) * 0.25 - n_zero * (n_zero + 1) * 0.25
        var = n * (n + 1) * (2 * n + 1) - n_zero * (n_zero + 1) * (2 * n_zero + 1)
        var -= float(np.sum(nonzero_sizes.astype(np.float64) ** 3 - nonzero_sizes)) / 2
        se = math.sqrt(var / 24)
        if se == 0:
            return WilcoxonResult(statistic, 1.0, r_plus, r_minus, n, n_zero, "degenerate", nan)
        z = (r_plus - mn) / se  # no continuity correction (scipy's default)
        if alternative == "two-sided":
            p = 2 * float(ndtr(-abs(z)))
        elif alternative == "greater":
            p = float(ndtr(-z))
        else:
            p = float(ndtr(z))
        method = "normal"
    return WilcoxonResult(statistic, float(min(max(p, 0.0), 1.0)), r_plus, r_minus, n, n_zero, method, min_p)


# ---------------------------------------------------------------------------- bootstrap


@dataclass(frozen=True)
class BootstrapResult:
    estimate: float  # the statistic's difference on the observed data, mean over splits
    ci_low: float
    ci_high: float
    se: float  # std of the bootstrap replicates
    n_boot: int
    n_splits: int
    confidence: float
    statistic: str


def worst_k_count(n: int, k: float) -> int:
    """⌈k·N⌉ (at least 1), as bench.metrics.worst_k."""
    return max(1, math.ceil(round(k * n, 9)))


def _stat_rows(x: np.ndarray, statistic: str | float) -> float:
    """The statistic of one sample: 'mean' or the worst-k mean for k a fraction."""
    if statistic == "mean":
        return float(x.mean())
    m = worst_k_count(len(x), float(statistic))
    return float(np.sort(x)[:m].mean())


def resample_counts(strata: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) draw counts: users resampled with replacement within each stratum (sizes kept).

    float32 (exact for counts below 2^24): the resampled statistics are products with it, bound by
    reading this matrix. They use ``einsum`` (numpy's own single-threaded loop) rather than BLAS,
    whose thread pool is very slow for products this small on a busy machine."""
    n = len(strata)
    counts = np.zeros((n_boot, n), dtype=np.float32)
    for v in np.unique(strata):
        members = np.flatnonzero(strata == v)
        k = len(members)
        idx = rng.integers(0, k, size=(n_boot, k)) + (np.arange(n_boot) * k)[:, None]
        counts[:, members] = np.bincount(idx.ravel(), minlength=n_boot * k).reshape(n_boot, k)
    return counts


def _resampled_stat(x: np.ndarray, counts: np.ndarray, statistic: str | float) -> np.ndarray:
    """The statistic of every resample given by ``counts`` (n_boot, n), without materialising it."""
    n = len(x)
    if statistic == "mean":
        return np.einsum("bn,n->b", counts, x.astype(np.float32)).astype(np.float64) / n
    m = worst_k_count(n, float(statistic))  # every resample has n users
    order = np.argsort(x, kind="stable")
    # Only the lowest values can be among a resample's m lowest: start with the 2m + 16 lowest users
    # and widen until every resample has drawn at least m of them (then the result is exact).
    width = min(n, 2 * m + 16)
    while True:
        c = counts[:, order[:width]]
        cum = np.cumsum(c, axis=1)  # float32 is exact for counts
        if width == n or cum[:, -1].min() >= m:
            break
        width = min(n, 2 * width)
    take = np.clip(np.float32(m) - (cum - c), np.float32(0), c)  # copies of each value among the m lowest
    return np.einsum("bn,n->b", take, x[order[:width]].astype(np.float32)).astype(np.float64) / m


def _cached_stat(x: np.ndarray, counts: np.ndarray, statistic, cache: dict | None) -> np.ndarray:
    if cache is None:
        return _resampled_stat(x, counts, statistic)
    key = ("stat", id(counts), statistic, x.tobytes())  # counts arrays live in the cache: ids are stable
    out = cache.get(key)
    if out is None:
        out = cache[key] = _resampled_stat(x, counts, statistic)
    return out


def paired_cluster_bootstrap(
    a: Sequence[np.ndarray],
    b: Sequence[np.ndarray],
    strata: Sequence[np.ndarray] | None = None,
    statistic: str | float = "mean",
    n_boot: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
    cache: dict | None = None,
    counts: Sequence[np.ndarray] | None = None,
) -> BootstrapResult:
    """Percentile CI of stat(A) − stat(B), averaged over splits, resampling users within splits.

    ``a[s]``/``b[s]`` are the per-user accuracies of the two methods on split ``s``, aligned user by
    user (users missing from either side — NaN — are dropped from that split). ``strata[s]`` (e.g.
    the seen flags) keeps each stratum's size fixed in every resample. ``statistic`` is ``"mean"``
    or a fraction k for the worst-k% mean (the ⌈k·N⌉ lowest users of each method separately, as
    the metric itself). The same resampled users serve both methods (paired). The draws of split
    ``s`` depend only on (seed, s, its strata), so a ``cache`` dict may share them between the
    comparisons of one table; ``counts[s]`` (n_boot × users, e.g. from :func:`resample_counts`)
    supplies them directly, for finite ``a``/``b``.
    """
    if len(a) != len(b):
        raise ValueError(f"a and b must list the same splits, got {len(a)} and {len(b)}")
    if statistic != "mean":
        k = float(statistic)
        if not 0 < k <= 1:
            raise ValueError(f"worst-k fraction must be in (0, 1], got {statistic}")
    if n_boot < 1 and counts is None:
        raise ValueError("n_boot must be ≥ 1")
    if counts is not None:
        n_boot = counts[0].shape[0] if len(counts) else n_boot
    reps = np.zeros(n_boot)
    est = []
    used = 0
    for s, (xa, xb) in enumerate(zip(a, b)):
        xa = np.asarray(xa, dtype=np.float64)
        xb = np.asarray(xb, dtype=np.float64)
        if xa.shape != xb.shape:
            raise ValueError(f"split {s}: a and b have {xa.shape} and {xb.shape} users; they must be aligned")
        if counts is not None:
            c = counts[s]
            if c.shape != (n_boot, len(xa)) or not (np.isfinite(xa).all() and np.isfinite(xb).all()):
                raise ValueError(f"split {s}: counts must be (n_boot, users) for finite a and b")
        else:
            ok = np.isfinite(xa) & np.isfinite(xb)
            st = (np.zeros(len(xa), dtype=np.int64) if strata is None else np.asarray(strata[s], dtype=np.int64))[ok]
            xa, xb = xa[ok], xb[ok]
            c = None
        if len(xa) == 0:
            continue
        used += 1
        est.append(_stat_rows(xa, statistic) - _stat_rows(xb, statistic))
        if c is None:
            key = ("draws", seed, s, n_boot, st.tobytes())
            c = cache.get(key) if cache is not None else None
            if c is None:
                c = resample_counts(st, n_boot, np.random.default_rng([seed, s]))
                if cache is not None:
                    cache[key] = c
        if statistic == "mean":  # a difference of means over the same users is the mean difference
            reps += _resampled_stat(xa - xb, c, "mean")
        else:  # each method's replicates depend only on its own values and the draws: cache them too
            reps += _cached_stat(xa, c, statistic, cache) - _cached_stat(xb, c, statistic, cache)
    nan = float("nan")
    name = "mean" if statistic == "mean" else f"worst{round(float(statistic) * 100)}"
    if used == 0:
        return BootstrapResult(nan, nan, nan, nan, n_boot, 0, confidence, name)
    reps /= used
    lo, hi = np.quantile(reps, [(1 - confidence) / 2, (1 + confidence) / 2])
    return BootstrapResult(float(np.mean(est)), float(lo), float(hi), float(reps.std(ddof=1)) if n_boot > 1 else nan,
                           n_boot, used, confidence, name)


# ---------------------------------------------------------------------------- Holm


def holm(pvalues: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm's step-down adjusted p-values (NaN entries stay NaN and are not counted)."""
    p = np.asarray(pvalues, dtype=np.float64)
    out = np.full(p.shape, np.nan)
    ok = np.flatnonzero(np.isfinite(p))
    m = len(ok)
    if m == 0:
        return out
    order = ok[np.argsort(p[ok], kind="mergesort")]
    adj = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adj, 1.0)
    return out

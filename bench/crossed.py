"""Inference for macro means over a users × splits design (docs/paper.md § Statistics).

Every split of a benchmark scores the *same* users, so a split-level number is not an independent
replicate of the population it speaks for: two splits share every user's persistent traits (who
the user is, which test pairs they hold when halves are fixed). The right model for one user-split
value ``y[u, s]`` (a user's test accuracy, or the paired difference of two methods' accuracies) is
a two-way *crossed* random-effects model without interaction,

    y[u, s] = μ + a[u] + b[s] + e[u, s],   a ~ (0, σ_a²), b ~ (0, σ_b²), e ~ (0, σ_e²),

with users drawn from a population of users and splits from the protocol's split randomness
(seen/unseen draw, halves when reshuffled, training seeds). Cells may be unobserved (a user not
in the population on that split, a user without test pairs): they are NaN.

A reported number is a weighted sum ``θ̂ = Σ w[u, s] y[u, s]`` — the mean over splits of the
split's macro mean over its observed users — so

    Var θ̂ = σ_a² Σ_u (Σ_s w[u, s])² + σ_b² Σ_s (Σ_u w[u, s])² + σ_e² Σ w[u, s]².

The variance components are estimated by Henderson's method I (moments of three quadratic forms:
the users' and the splits' between-group sums of squares and the residual of the additive fit,
whose expectations are exact in the unbalanced case), truncated at zero, and the standard error
gets Satterthwaite's degrees of freedom; intervals and tests are Student-t. In the balanced case
the variance is ``(MS_users + MS_splits − MS_error) / (N S)``.

Worst-k% means are not macro means, but each split's worst-k mean equals the macro mean of the
pseudo-values ``ψ = q − (N/m)·max(q − x, 0)`` (``q`` the m-th lowest accuracy, m = ⌈kN⌉) —
the influence function of the lower tail mean — so the same machinery serves them
(:func:`worst_k_pseudo`).

Everything is vectorised over a leading replicate axis, so that the calibration simulation
(:mod:`bench.calibration`) runs this very code on thousands of simulated benchmarks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["CrossedResult", "crossed_batch", "crossed_inference", "worst_k_pseudo", "MIN_TAIL_USERS", "tail_users"]

# A worst-k% mean rests on its m = ⌈kN⌉ lowest users; with fewer than this many, the simulation
# (bench/calibration.py) shows its interval undercovering (m = 4: 0.92, size 0.085), so none is given.
MIN_TAIL_USERS = 10


def tail_users(n: int, k: float) -> int:
    """m = ⌈k·n⌉ (at least 1), as bench.metrics.worst_k."""
    return max(1, math.ceil(round(k * n, 9)))


@dataclass(frozen=True)
class CrossedResult:
    """Estimate, standard error and t-inference of one macro mean over a users × splits design."""

    estimate: float
    se: float
    df: float
    statistic: float
    pvalue: float
    ci_low: float
    ci_high: float
    n_users: int  # users observed on at least one split
    n_splits: int  # splits with at least one observed user
    var_users: float  # contributions to Var θ̂ (sum to se²)
    var_splits: float
    var_error: float
    confidence: float = 0.95
    note: str = ""  # why there is no interval, in words ("" when there is one)

    @property
    def ok(self) -> bool:
        return not self.note

    def share(self) -> dict[str, float]:
        v = self.se ** 2 if np.isfinite(self.se) and self.se > 0 else np.nan
        return {"users": self.var_users / v, "splits": self.var_splits / v, "error": self.var_error / v}


def worst_k_pseudo(x: np.ndarray, k: float, mask: np.ndarray | None = None) -> np.ndarray:
    """Pseudo-values whose macro mean over each split's observed users is that split's worst-k mean.

    ``x`` (..., N, S), NaN = unobserved (or ``mask`` False). Per split, with n observed users and
    m = ⌈k·n⌉: ψ = q − (n/m)·max(q − x, 0), q the m-th lowest value. Unobserved cells stay NaN.
    """
    x = np.asarray(x, dtype=np.float64)
    obs = np.isfinite(x) if mask is None else (np.asarray(mask, bool) & np.isfinite(x))
    n = obs.sum(axis=-2)  # (..., S)
    m = np.maximum(1, np.ceil(np.round(k * n, 9))).astype(np.int64)
    srt = np.sort(np.where(obs, x, np.inf), axis=-2)
    idx = np.clip(m - 1, 0, x.shape[-2] - 1)[..., None, :]
    q = np.take_along_axis(srt, idx, axis=-2)  # (..., 1, S)
    scale = np.where(n > 0, n / m, 0.0)[..., None, :]
    psi = q - scale * np.maximum(q - x, 0.0)
    return np.where(obs, psi, np.nan)


def _excess_kurtosis(d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Per-row excess kurtosis of the masked deviations (≥ 0: light tails never raise a df)."""
    n = mask.sum(1).astype(np.float64)
    d = np.where(mask, d, 0.0)
    d = d - np.where(mask, (d.sum(1) / np.maximum(n, 1))[:, None], 0.0)
    m2 = (d ** 2).sum(1)
    m4 = (d ** 4).sum(1)
    with np.errstate(divide="ignore", invalid="ignore"):
        k = n * m4 / m2 ** 2 - 3.0
    return np.where((m2 > 0) & (n > 3), np.maximum(k, 0.0), 0.0)


def crossed_batch(y: np.ndarray, confidence: float = 0.95, null: float = 0.0) -> dict[str, np.ndarray]:
    """Crossed-design inference for every replicate of ``y`` (R, N, S); NaN = unobserved.

    Returns arrays of length R: estimate, se, df, statistic, pvalue, ci_low, ci_high, var_users,
    var_splits, var_error, n_users, n_splits. Where no interval exists (one split, one user, or
    no variability at all) se/df/p/ci are NaN; :func:`crossed_inference` says why in words.
    """
    from scipy.special import stdtr, stdtrit

    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 3:
        raise ValueError(f"y must be (replicates, users, splits), got shape {y.shape}")
    m = np.isfinite(y)
    mf = m.astype(np.float64)
    y0 = np.where(m, y, 0.0)
    n_u, n_s = mf.sum(2), mf.sum(1)  # (R, N), (R, S)
    n = n_s.sum(1)
    act_u, act_s = n_u > 0, n_s > 0
    N, S = act_u.sum(1).astype(np.float64), act_s.sum(1).astype(np.float64)
    inv_nu = np.divide(1.0, n_u, out=np.zeros_like(n_u), where=act_u)
    inv_ns = np.divide(1.0, n_s, out=np.zeros_like(n_s), where=act_s)
    invS = np.divide(1.0, S, out=np.zeros_like(S), where=S > 0)
    w = mf * inv_ns[:, None, :] * invS[:, None, None]
    est = (w * y0).sum((1, 2))
    g = np.stack([(w.sum(2) ** 2).sum(1), (w.sum(1) ** 2).sum(1), (w ** 2).sum((1, 2))], axis=1)  # (R, 3)

    yu, ys = y0.sum(2), y0.sum(1)
    yt = ys.sum(1)
    inv_n = np.divide(1.0, n, out=np.zeros_like(n), where=n > 0)
    corr = yt ** 2 * inv_n
    q1 = (yu ** 2 * inv_nu).sum(1) - corr  # between users
    q2 = (ys ** 2 * inv_ns).sum(1) - corr  # between splits
    # additive fit: user effects eliminated, split effects from the reduced normal equations C b = r
    C = -np.matmul((mf * inv_nu[:, :, None]).transpose(0, 2, 1), mf)
    idx = np.arange(y.shape[2])
    C[:, idx, idx] += n_s
    r = ys - (mf * (yu * inv_nu)[:, :, None]).sum(1)
    act = act_s.astype(np.float64)
    C_reg = C + act[:, :, None] * act[:, None, :] * invS[:, None, None] + np.where(act_s, 0.0, 1.0)[:, :, None] * np.eye(len(idx))
    b = np.linalg.solve(C_reg, r[..., None])[..., 0]
    fit = (yu ** 2 * inv_nu).sum(1) + (b * r).sum(1)
    q3 = np.maximum((y0 ** 2).sum((1, 2)) - fit, 0.0)
    df_e = n - N - S + 1

    sum_nu2 = (n_u ** 2).sum(1)
    sum_ns2 = (n_s ** 2).sum(1)
    k_aa = n - sum_nu2 * inv_n
    # Σ_s Σ_u n_us² / n_u = Σ_u (Σ_s n_us)/n_u = number of active users (n_us ∈ {0, 1})
    k_ab = N - sum_ns2 * inv_n
    k_ba = S - sum_nu2 * inv_n
    k_bb = n - sum_ns2 * inv_n
    R = y.shape[0]
    K = np.zeros((R, 3, 3))
    K[:, 0, 0], K[:, 0, 1], K[:, 0, 2] = k_aa, k_ab, N - 1
    K[:, 1, 0], K[:, 1, 1], K[:, 1, 2] = k_ba, k_bb, S - 1
    K[:, 2, 2] = df_e
    Q = np.stack([q1, q2, q3], axis=1)
    # sums of squares at rounding level (values constant up to float error) are zero
    Q = np.where(Q <= 1e-12 * (y0 ** 2).sum((1, 2))[:, None], 0.0, Q)
    dfs = np.stack([N - 1, S - 1, df_e], axis=1)
    # Heavy tails (worst-k pseudo-values: a few users carry the tail) make a sum of squares far
    # noisier than χ²: Var(s²)/σ⁴ = 2/(n−1) + κ/n for excess kurtosis κ, so each component's
    # Satterthwaite df is shrunk to 2 / (2/df + κ̂/n) (unchanged for normal-tailed values).
    a_u = (yu - (mf * b[:, None, :]).sum(2)) * inv_nu  # user effects (incl. the grand mean)
    resid = np.where(m, y0 - a_u[:, :, None] - b[:, None, :], 0.0)
    ybar_u = yu * inv_nu
    gm = (yt * inv_n)[:, None]
    dev_u = np.where(act_u, ybar_u - gm, 0.0)
    dev_s = np.where(act_s, ys * inv_ns - gm, 0.0)
    kap = np.stack([_excess_kurtosis(dev_u, act_u), _excess_kurtosis(dev_s, act_s),
                    _excess_kurtosis(resid.reshape(len(y), -1), m.reshape(len(y), -1))], axis=1)
    count = np.stack([N, S, n], axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        dfs = np.where(dfs > 0, 2.0 / (2.0 / np.where(dfs > 0, dfs, 1.0) + kap / np.maximum(count, 1.0)), dfs)
    estimable = (N >= 2) & (S >= 2) & (df_e >= 1)
    K_safe = np.where(estimable[:, None, None], K, np.eye(3))
    Kinv = np.linalg.inv(K_safe)
    sig = np.einsum("rjk,rk->rj", Kinv, Q)
    keep = sig > 0
    sig = np.where(keep, sig, 0.0)
    parts = g * sig
    var = parts.sum(1)
    h = np.einsum("rjk,rj->rk", Kinv, g * keep)  # Var̂ = Σ_k h_k Q_k
    denom = np.where(dfs > 0, (h * Q) ** 2 / np.where(dfs > 0, dfs, 1.0), 0.0).sum(1)
    ok = estimable & (var > 0) & np.isfinite(var)
    df = np.where(ok & (denom > 0), var ** 2 / np.where(denom > 0, denom, 1.0), np.nan)
    df = np.where(ok, np.clip(np.nan_to_num(df, nan=1.0), 1.0, np.maximum(n - 1, 1.0)), np.nan)
    se = np.where(ok, np.sqrt(np.where(ok, var, 1.0)), np.nan)
    t = (est - null) / se
    p = np.where(ok, 2.0 * stdtr(np.where(ok, df, 1.0), -np.abs(np.nan_to_num(t))), np.nan)
    qt = np.where(ok, stdtrit(np.where(ok, df, 1.0), 0.5 + confidence / 2), np.nan)
    return {"estimate": est, "se": se, "df": df, "statistic": t, "pvalue": np.minimum(p, 1.0),
            "ci_low": est - qt * se, "ci_high": est + qt * se,
            "var_users": np.where(ok, parts[:, 0], np.nan), "var_splits": np.where(ok, parts[:, 1], np.nan),
            "var_error": np.where(ok, parts[:, 2], np.nan), "n_users": N.astype(np.int64), "n_splits": S.astype(np.int64)}


def crossed_inference(y: np.ndarray, confidence: float = 0.95, null: float = 0.0) -> CrossedResult:
    """:func:`crossed_batch` for one (N, S) matrix, with the reason in words where no interval exists."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    y = np.asarray(y, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"y must be (users, splits), got shape {y.shape}")
    if y.size == 0:
        y = np.full((1, 1), np.nan)
    out = {k: v[0] for k, v in crossed_batch(y[None], confidence, null).items()}
    n_users, n_splits = int(out["n_users"]), int(out["n_splits"])
    note = ""
    if not np.isfinite(out["se"]):
        if n_splits == 0:
            note = "no paired values"
        elif n_splits == 1:
            note = ("one split only: the split-to-split variance cannot be estimated, so there is no interval "
                    "(run more splits, e.g. --repeats 5)")
        elif n_users < 2:
            note = "one user only: the user-to-user variance cannot be estimated"
        else:
            obs = y[np.isfinite(y)]
            if np.ptp(obs) == 0:
                note = (f"every user on every split gives the same value ({obs[0] * 100:+.2f} points): "
                        "no variability to build an interval from")
            else:
                note = "the variance components are all estimated as zero: no interval"
    f = float
    return CrossedResult(f(out["estimate"]), f(out["se"]), f(out["df"]), f(out["statistic"]), f(out["pvalue"]),
                         f(out["ci_low"]), f(out["ci_high"]), n_users, n_splits, f(out["var_users"]),
                         f(out["var_splits"]), f(out["var_error"]), confidence, note)

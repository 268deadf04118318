"""Seeded simulations of the protocol, to check that intervals and tests hold their level.

A simulated benchmark has N users who are tested on every one of S splits (as in the protocol).
Two methods A and B are scored per user and split; a user's accuracy is the fraction of their T_u
test pairs answered right, each right with probability

    sigmoid(α_u + δ_u^M + Δ·[M = A] + π_us^M + β_s^M + z_us·γ_u^M + ε_us^M)

with α_u the user's ability (shared by the methods, heavy-tailed), δ_u^M a user-specific affinity
for the method, Δ the true advantage of A (0 under the null, where A and B are exchangeable),
π_us^M the difficulty of the user's test pairs (drawn once per user when halves are fixed,
Reddit-style; drawn again on every split when halves are reshuffled, PRISM-style), β_s^M the
split's training randomness, z_us = 1 when the user is seen on split s (a random half each split)
with a user-specific seen bonus γ_u^M, and ε_us^M the per-pair residual noise of a retrained model.

The *truth* an interval must cover is the expectation of the reported number over the population
of users and over splits. For macro means of A − B it is computed from a large independent draw of
users (:func:`population_truth`); for worst-k% means and single-method levels it is the expectation
of the estimator at the same N, from independent simulated benchmarks. The checks
run the product's own code (:func:`bench.crossed.crossed_batch`, :func:`bench.crossed.worst_k_pseudo`).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

POPULATIONS = ("seen", "unseen", "overall")


@dataclass(frozen=True)
class Design:
    name: str
    n_users: int
    n_splits: int
    halves: str  # "fixed" (Reddit) or "reshuffled" (PRISM)
    pairs_low: int  # test pairs per user: uniform integers in [low, high]
    pairs_high: int
    mu: float = 0.4  # mean logit ability
    sd_user: float = 0.6
    sd_affinity: float = 0.15  # per-method user affinity (δ)
    sd_pair: float = 1.0  # logit sd of one test pair's difficulty (π averages T_u of them)
    share_pair: float = 0.6  # fraction of pair difficulty shared by the two methods
    sd_split: float = 0.04  # per method, per split
    sd_noise: float = 0.1  # per user, split and method
    seen_bonus: float = 0.15
    sd_bonus: float = 0.1
    seen_frac: float = 0.5
    effect: float = 0.0  # Δ

    def with_effect(self, effect: float) -> "Design":
        return replace(self, effect=effect, name=f"{self.name}{'' if effect == 0 else ', Δ≠0'}")


def prism_style(n_splits: int, n_users: int = 1000) -> Design:
    """Many users with few test pairs each; halves reshuffled on every split."""
    return Design(f"PRISM-style ({n_users} users, {n_splits} splits)", n_users, n_splits, "reshuffled", 1, 8,
                  sd_user=0.5, sd_affinity=0.1, sd_split=0.05, sd_noise=0.1)


def reddit_style(n_splits: int, n_users: int = 40) -> Design:
    """Few users with many test pairs each; the same halves on every split."""
    return Design(f"Reddit-style ({n_users} users, {n_splits} splits)", n_users, n_splits, "fixed", 150, 300,
                  sd_user=0.8, sd_affinity=0.3, sd_split=0.04, sd_noise=0.05, seen_bonus=0.3, sd_bonus=0.2)


@dataclass
class Simulated:
    """R simulated benchmarks: accuracies (R, N, S) of A and B, and the seen flags (R, N, S)."""

    design: Design
    acc_a: np.ndarray
    acc_b: np.ndarray
    seen: np.ndarray

    def population(self, acc: np.ndarray, pop: str) -> np.ndarray:
        if pop == "overall":
            return acc
        keep = self.seen if pop == "seen" else ~self.seen
        return np.where(keep, acc, np.nan)


def _sigmoid(x):
    return 1.0 / (1.0 + np.exp(-x))


def _users(d: Design, rng: np.random.Generator, shape: tuple[int, ...]):
    # heavy-tailed abilities (Student t with 5 df, scaled to sd_user)
    alpha = d.mu + d.sd_user * rng.standard_t(5, size=shape) / np.sqrt(5 / 3)
    aff = rng.normal(0.0, d.sd_affinity, size=(2, *shape))
    bonus = d.seen_bonus + rng.normal(0.0, d.sd_bonus, size=(2, *shape))
    return alpha, aff, bonus


def _pair_difficulty(d: Design, rng, shape, T):
    """Mean logit difficulty of T test pairs, for both methods (a shared and a private part)."""
    sd = d.sd_pair / np.sqrt(T)
    shared = rng.standard_normal(size=shape, dtype=np.float32) * (sd * np.sqrt(d.share_pair))
    own = rng.standard_normal(size=(2, *shape), dtype=np.float32) * (sd * np.sqrt(1 - d.share_pair))
    return shared + own


def simulate(d: Design, n_rep: int, seed: int) -> Simulated:
    """``n_rep`` independent benchmarks of design ``d``."""
    rng = np.random.default_rng(seed)
    R, N, S = n_rep, d.n_users, d.n_splits
    T = rng.integers(d.pairs_low, d.pairs_high + 1, size=(R, N, 1))
    alpha, aff, bonus = _users(d, rng, (R, N, 1))
    if d.halves == "fixed":
        pi = _pair_difficulty(d, rng, (R, N, 1), T)
    else:
        pi = _pair_difficulty(d, rng, (R, N, S), T)
    beta = rng.normal(0.0, d.sd_split, size=(2, R, 1, S))
    n_seen = int(round(d.seen_frac * N))
    seen = rng.permuted(np.broadcast_to((np.arange(N) < n_seen)[None, :, None], (R, N, S)), axis=1)
    eps = d.sd_noise * rng.standard_normal(size=(2, R, N, S), dtype=np.float32)
    logit = alpha + aff + pi + beta + seen * bonus + eps
    logit[0] += d.effect
    acc = rng.binomial(np.broadcast_to(T, (2, R, N, S)), _sigmoid(logit)) / T
    return Simulated(d, acc[0], acc[1], seen)


def population_truth(d: Design, pop: str, n_users: int = 400_000, seed: int = 12345) -> float:
    """E[acc_A − acc_B] over users and splits in population ``pop`` (a large independent draw)."""
    if d.effect == 0:
        return 0.0  # A and B exchangeable
    rng = np.random.default_rng(seed)
    T = rng.integers(d.pairs_low, d.pairs_high + 1, size=n_users)
    alpha, aff, bonus = _users(d, rng, (n_users,))
    pi = _pair_difficulty(d, rng, (n_users,), T)
    beta = rng.normal(0.0, d.sd_split, size=(2, n_users))
    eps = rng.normal(0.0, d.sd_noise, size=(2, n_users))
    z = {"seen": 1.0, "unseen": 0.0, "overall": (rng.random(n_users) < d.seen_frac).astype(float)}[pop]
    logit = alpha + aff + pi + beta + z * bonus + eps
    logit[0] += d.effect
    p = _sigmoid(logit)  # E[acc | latent] (binomial noise is unbiased)
    return float((p[0] - p[1]).mean())


def split_metric(x: np.ndarray, k: float | None) -> np.ndarray:
    """Per-split macro mean (k None) or worst-k mean of (R, N, S) → (R, S)."""
    if k is None:
        return np.nanmean(x, axis=1)
    from bench.crossed import worst_k_pseudo

    return np.nanmean(worst_k_pseudo(x, k), axis=1)


# ---------------------------------------------------------------------------- selection bias


@dataclass(frozen=True)
class TrajectoryDesign:
    """Per-epoch test accuracy of one method; optimism = best epoch's value − final epoch's.

    Conditional on the benchmark's users, splits are independent draws, and so are their
    optimism values; the truth is E[optimism | these users]."""

    name: str
    n_users: int
    n_splits: int
    n_epochs: int = 40
    pairs_low: int = 1
    pairs_high: int = 8
    rho: float = 0.9  # autocorrelation of the model's epoch-to-epoch wander
    sd_wander: float = 0.01  # accuracy


def trajectories(d: TrajectoryDesign, n_rep: int, seed: int, users_seed: int = 7) -> np.ndarray:
    """(R, S, E) split-level overall accuracy per epoch; the users are the same in every replicate.

    Per split: which fixed users are seen (their seen bonus moves the split's level), the split's
    training randomness, the model's autocorrelated wander over epochs, and the binomial noise of
    scoring the users' fixed test pairs (normal approximation at the split level)."""
    urng = np.random.default_rng(users_seed)
    N = d.n_users
    T = urng.integers(d.pairs_low, d.pairs_high + 1, size=N)
    p_unseen = _sigmoid(0.3 + 0.6 * urng.standard_t(5, size=N) / np.sqrt(5 / 3))
    p_seen = _sigmoid(np.log(p_unseen / (1 - p_unseen)) + 0.2 + 0.2 * urng.standard_normal(N))
    rng = np.random.default_rng(seed)
    R, S, E = n_rep, d.n_splits, d.n_epochs
    seen = rng.permuted(np.broadcast_to(np.arange(N) < N // 2, (R, S, N)), axis=2)
    level = np.where(seen, p_seen, p_unseen).mean(axis=2)  # (R, S)
    noise_sd = np.sqrt((p_unseen * (1 - p_unseen) / T).sum()) / N
    curve = 0.12 * (1 - np.exp(-np.arange(1, E + 1) / 8.0))  # learning curve in accuracy
    z = rng.standard_normal(size=(R, S, E))
    wander = np.empty((R, S, E))
    wander[..., 0] = z[..., 0]
    for e in range(1, E):
        wander[..., e] = d.rho * wander[..., e - 1] + np.sqrt(1 - d.rho ** 2) * z[..., e]
    beta = rng.normal(0.0, 0.01, size=(R, S, 1))
    return (level[..., None] - 0.1 + curve + d.sd_wander * wander + beta
            + noise_sd * rng.standard_normal(size=(R, S, E)))


def optimism(traj: np.ndarray) -> np.ndarray:
    """(R, S) best-epoch minus final-epoch value (first maximum, as the official loop)."""
    return traj.max(axis=2) - traj[..., -1]


# ---------------------------------------------------------------------------- checks

METRICS = (("overall", None), ("seen", None), ("unseen", None), ("overall_worst10", 0.10), ("overall_worst50", 0.50))
LEVEL_METRICS = ("unseen", "overall_worst10")  # worst-k levels: the rejected Fig. 3 whisker (see docs)


def _pop_k(metric: str):
    pop, _, rest = metric.partition("_")
    return pop, (int(rest[len("worst"):]) / 100 if rest else None)


def diff_values(sim: Simulated, metric: str) -> np.ndarray:
    """(R, N, S) user-split values whose crossed macro mean is the reported A − B difference."""
    from bench.crossed import worst_k_pseudo

    pop, k = _pop_k(metric)
    a, b = sim.population(sim.acc_a, pop), sim.population(sim.acc_b, pop)
    if k is None:
        return a - b
    return worst_k_pseudo(a, k) - worst_k_pseudo(b, k)


def level_values(sim: Simulated, metric: str) -> np.ndarray:
    from bench.crossed import worst_k_pseudo

    pop, k = _pop_k(metric)
    a = sim.population(sim.acc_a, pop)
    return a if k is None else worst_k_pseudo(a, k)


def nb_ttest(split_diffs: np.ndarray, n_train: np.ndarray, n_test: np.ndarray, confidence: float = 0.95):
    """Vectorised Nadeau–Bengio corrected t over (R, S) split-level differences: (ci_low, ci_high, p)."""
    from scipy.special import stdtr, stdtrit

    S = split_diffs.shape[1]
    m = split_diffs.mean(1)
    v = split_diffs.var(1, ddof=1)
    se = np.sqrt((1 / S + n_test / n_train) * v)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = m / se
    q = stdtrit(S - 1, 0.5 + confidence / 2)
    p = np.where(se > 0, 2 * stdtr(S - 1, -np.abs(np.nan_to_num(t))), np.nan)
    return m - q * se, m + q * se, p


def plain_t(split_values: np.ndarray, confidence: float = 0.95):
    """t-interval over splits (R, S) → (ci_low, ci_high, p against 0)."""
    return nb_ttest(split_values, np.ones(len(split_values)), np.zeros(len(split_values)), confidence)


def coverage_rows(design: Design, n_rep: int, seed: int, truth_reps: int = 2000, chunk: int = 100,
                  extra: bool = False) -> list[dict]:
    """Coverage (Δ ≠ 0) and size (Δ = 0) of every interval/test, for one design.

    ``extra`` adds the rejected designs (within-split bootstrap, user bootstrap, plain t over
    splits) for the comparison table; they are slow and only the benchmark script asks for them.
    """
    from bench.crossed import MIN_TAIL_USERS, crossed_batch, tail_users
    from bench.stats import wilcoxon_signed_rank

    effect = 0.12
    alt = design.with_effect(effect)
    rows: list[dict] = []
    acc: dict[tuple, list] = {}

    def add(key, hits):
        acc.setdefault(key, []).append(np.asarray(hits, dtype=float))

    # truths: macro means of A − B from a large draw of users; worst-k differences and one method's
    # levels as the estimator's expectation, from one independent set of simulated benchmarks
    truths = {("diff", m): population_truth(alt, m) for m, k in METRICS if k is None}
    est_parts: dict[tuple, list] = {}
    for start in range(0, truth_reps, chunk):
        sim = simulate(alt, min(chunk, truth_reps - start), seed + 10_000_000 + start)
        for m, k in METRICS:
            if k is not None:
                est_parts.setdefault(("diff", m), []).append(np.nanmean(np.nanmean(diff_values(sim, m), axis=1), axis=1))
        for m in LEVEL_METRICS:
            est_parts.setdefault(("level", m), []).append(np.nanmean(np.nanmean(level_values(sim, m), axis=1), axis=1))
    truths.update({key: float(np.concatenate(v).mean()) for key, v in est_parts.items()})

    for start in range(0, n_rep, chunk):
        r = min(chunk, n_rep - start)
        for which, d in (("null", design), ("alt", alt)):
            sim = simulate(d, r, seed + start + (0 if which == "null" else 5_000_000))
            for metric, k in METRICS:
                y = diff_values(sim, metric)
                truth = 0.0 if which == "null" else truths[("diff", metric)]
                out = crossed_batch(y)
                if k is not None and tail_users(int(np.isfinite(y[0]).sum(0).min()), k) < MIN_TAIL_USERS:
                    out["ci_low"][:] = out["ci_high"][:] = np.nan  # the product gives no interval here
                add(("crossed t (bench compare, test CSVs)", metric, which), _inside(out, truth))
                pop, _ = _pop_k(metric)
                sd = np.nanmean(y, axis=1)  # (R, S) split-level differences
                n_tr = sim.seen.sum(1).mean(1).astype(float)
                n_te = (~sim.seen).sum(1).mean(1).astype(float)
                lo, hi, p = nb_ttest(sd, n_tr, n_te)
                add(("corrected t, n in users (paper convention)", metric, which), (lo <= truth) & (truth <= hi))
                if which == "null":
                    wx = [wilcoxon_signed_rank(row).pvalue for row in sd]
                    add(("Wilcoxon over splits", metric, "null"), np.asarray(wx) >= 0.05)
                if extra:
                    lo, hi, _ = plain_t(sd)
                    add(("t over splits (old Fig. 6 band)", metric, which), (lo <= truth) & (truth <= hi))
                    for name, fn in (("bootstrap within splits (old)", _within_split_bootstrap),
                                     ("bootstrap of users across splits", _user_bootstrap)):
                        if start < 300:  # slow: a few hundred replicates are enough to show the failure
                            lo, hi = fn(sim, metric, seed + start)
                            add((name, metric, which), (lo <= truth) & (truth <= hi))
            if which == "alt":
                for metric in LEVEL_METRICS:
                    out = crossed_batch(level_values(sim, metric))
                    t = truths[("level", metric)]
                    name = "crossed t, one method (Fig. 6 band)" if metric == "unseen" else \
                        "crossed t, one method, worst-k (rejected for Fig. 3)"
                    add((name, metric, "level"), _inside(out, t))
                    if extra:
                        lo, hi, _ = plain_t(np.nanmean(level_values(sim, metric), axis=1))
                        add(("t over splits, one method (old Fig. 6 band)", metric, "level"), (lo <= t) & (t <= hi))
    for (name, metric, which), parts in acc.items():
        hits = np.concatenate(parts)
        total = len(hits)
        hits = hits[np.isfinite(hits)]  # NaN: no interval given (said in words by the product)
        rate = float(hits.mean()) if len(hits) else float("nan")
        rows.append({"interval": name, "design": design.name, "metric": metric,
                     "check": {"null": "size", "alt": "coverage", "level": "coverage"}[which],
                     "value": 1 - rate if which == "null" else rate, "n_sim": len(hits),
                     "no_interval": 1 - len(hits) / total if total else float("nan")})
    return rows


def _inside(out: dict, truth: float) -> np.ndarray:
    """1 where the interval holds the truth, 0 where not, NaN where there is no interval."""
    lo, hi = out["ci_low"], out["ci_high"]
    return np.where(np.isfinite(lo) & np.isfinite(hi), ((lo <= truth) & (truth <= hi)).astype(float), np.nan)


def selection_bias_rows(d: TrajectoryDesign, n_rep: int, seed: int, truth_reps: int = 20_000,
                        chunk: int = 100) -> list[dict]:
    """Coverage of the selection-bias interval (t over splits, conditional on the users)."""
    truth = float(np.mean(np.concatenate([optimism(trajectories(replace(d, n_splits=1), min(chunk * 10, truth_reps - i),
                                                                  seed + 30_000_000 + i)).ravel()
                                          for i in range(0, truth_reps, chunk * 10)])))
    hits = []
    for start in range(0, n_rep, chunk):
        opt = optimism(trajectories(d, min(chunk, n_rep - start), seed + start))
        lo, hi, _ = plain_t(opt)
        hits.append((lo <= truth) & (truth <= hi))
    h = np.concatenate(hits)
    return [{"interval": "t over splits (selection-bias optimism)", "design": d.name, "metric": "overall",
             "check": "coverage", "value": float(h.mean()), "n_sim": len(h)}]


def _within_split_bootstrap(sim: Simulated, metric: str, seed: int, n_boot: int = 400):
    """Today's-before design: users resampled within each split independently, averaged over splits."""
    rng = np.random.default_rng(seed)
    y = diff_values(sim, metric)
    R, N, S = y.shape
    lo, hi = np.empty(R), np.empty(R)
    for r in range(R):
        reps = np.zeros(n_boot)
        for s in range(S):
            v = y[r, :, s]
            v = v[np.isfinite(v)]
            idx = rng.integers(0, len(v), size=(n_boot, len(v)))
            reps += v[idx].mean(1)
        reps /= S
        lo[r], hi[r] = np.quantile(reps, [0.025, 0.975])
    return lo, hi


def _user_bootstrap(sim: Simulated, metric: str, seed: int, n_boot: int = 400):
    """Users resampled once, each carrying their rows in every split (ignores split variance)."""
    rng = np.random.default_rng(seed)
    y = diff_values(sim, metric)
    R, N, S = y.shape
    lo, hi = np.empty(R), np.empty(R)
    for r in range(R):
        idx = rng.integers(0, N, size=(n_boot, N))
        yb = y[r][idx]  # (B, N, S)
        reps = np.nanmean(np.nanmean(yb, axis=1), axis=1)
        lo[r], hi[r] = np.quantile(reps, [0.025, 0.975])
    return lo, hi

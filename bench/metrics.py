"""Metrics as pure functions (protocol.md § Metrics).

Per-user accuracy is the only thing computed from scores; every other number is derived from the
stored per-user rows: seen / unseen / overall macro means, worst-k% means, and mean ± std over
splits. A tie (margin exactly 0) or a NaN margin counts as wrong.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

WORST_K = (0.10, 0.20, 0.50)
POPULATIONS = ("seen", "unseen", "overall")


def pair_credit(margin: np.ndarray, a_is_chosen: np.ndarray) -> np.ndarray:
    """Credit in [0, 1] per pair: the fraction of its (replicate) margins that favour the chosen one.

    ``margin`` is score(a) − score(b), shape (n,) or (n, R); a tie or NaN earns nothing.
    """
    m = np.asarray(margin, dtype=np.float64)
    if m.ndim == 1:
        m = m[:, None]
    a = np.asarray(a_is_chosen, dtype=bool)[:, None]
    right = np.where(a, m > 0, m < 0)  # NaN compares False on both sides
    return right.mean(axis=1)


def user_accuracy(user: np.ndarray, credit: np.ndarray, n_users: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(n_correct, n_test, accuracy) per user; accuracy is NaN for a user without test pairs."""
    n_test = np.bincount(user, minlength=n_users).astype(np.int64)
    n_correct = np.bincount(user, weights=credit, minlength=n_users)
    with np.errstate(invalid="ignore", divide="ignore"):
        acc = np.where(n_test > 0, n_correct / np.maximum(n_test, 1), np.nan)
    return n_correct, n_test, acc


def worst_k(acc: Sequence[float] | np.ndarray, k: float) -> float:
    """Mean accuracy of the ⌈k·N⌉ lowest users (NaN users ignored)."""
    a = np.asarray(acc, dtype=np.float64)
    a = a[~np.isnan(a)]
    if len(a) == 0:
        return float("nan")
    if not 0 < k <= 1:
        raise ValueError(f"k must be in (0, 1], got {k}")
    m = max(1, math.ceil(round(k * len(a), 9)))
    return float(np.sort(a)[:m].mean())


def macro_mean(acc: np.ndarray) -> float:
    a = np.asarray(acc, dtype=np.float64)
    a = a[~np.isnan(a)]
    return float(a.mean()) if len(a) else float("nan")


def split_metrics(seen: np.ndarray, acc: np.ndarray, worst: Iterable[float] = WORST_K) -> dict[str, float]:
    """Split-level numbers from one split's per-user rows (``seen`` flags, ``acc`` accuracies)."""
    seen = np.asarray(seen, dtype=bool)
    acc = np.asarray(acc, dtype=np.float64)
    out: dict[str, float] = {}
    for pop, mask in (("seen", seen), ("unseen", ~seen), ("overall", np.ones_like(seen))):
        out[pop] = macro_mean(acc[mask])
        for k in worst:
            out[f"{pop}_worst{round(k * 100)}"] = worst_k(acc[mask], k)
    return out


def cell_metrics(rows: pd.DataFrame, by: Sequence[str] = ("cell",)) -> pd.DataFrame:
    """Split-level metrics for every cell in a frame of per-user rows."""
    recs = []
    for key, g in rows.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        rec = dict(zip(by, key))
        rec.update(split_metrics(g["seen"].to_numpy(), g["accuracy"].to_numpy()))
        recs.append(rec)
    return pd.DataFrame.from_records(recs)


def mean_std(values: Sequence[float] | np.ndarray) -> tuple[float, float, int]:
    """Mean and sample std (ddof=1) over splits; std is NaN with fewer than two splits."""
    v = np.asarray(values, dtype=np.float64)
    v = v[~np.isnan(v)]
    if len(v) == 0:
        return float("nan"), float("nan"), 0
    std = float(v.std(ddof=1)) if len(v) > 1 else float("nan")
    return float(v.mean()), std, int(len(v))


def bayes_accuracy(p_true: np.ndarray) -> float:
    """Expected accuracy of the Bayes-optimal rule, mean(max(p, 1 − p))."""
    p = np.asarray(p_true, dtype=np.float64)
    return float(np.maximum(p, 1 - p).mean())

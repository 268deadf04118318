"""Small helpers shared by method plugins (no heavy imports at module level)."""

from __future__ import annotations

import numpy as np

from bench.api import Queries


def unique_rows(queries: Queries) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct response rows among a query set, and the positions of a and b in them."""
    rows, inv = np.unique(np.r_[queries.a, queries.b], return_inverse=True)
    n = len(queries)
    return rows, inv[:n], inv[n:]


def user_balanced_weights(user: np.ndarray, n_users: int) -> np.ndarray:
    """Weight 1/n_u for each pair of user u: a sum over users of each user's mean loss."""
    counts = np.bincount(user, minlength=n_users).astype(np.float64)
    return (1.0 / np.maximum(counts, 1.0))[user]

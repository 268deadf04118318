"""Small in-memory datasets with planted preference structure, for method correctness tests.

Every response is a fresh Gaussian feature vector; user u's true reward is ``x · θ_u`` with
``θ_u = B a_u``: ``B`` (dim × K) a planted basis and ``a_u`` the user's coordinates. Labels follow
Bradley–Terry with temperature ``beta``. Each pair is its own group, so a user's pairs are split
into train/test halves at random by the engine.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from bench.data import Dataset, Features
from bench.hashing import hash_obj


def planted_dataset(
    users: int = 60,
    pairs_per_user: int = 60,
    dim: int = 16,
    basis: np.ndarray | None = None,
    coords: np.ndarray | None = None,
    beta: float = 4.0,
    seed: int = 0,
    name: str = "planted",
) -> tuple[Dataset, dict]:
    """Return (dataset, truth) where truth holds the basis, each user's coordinates and θ."""
    rng = np.random.default_rng(seed)
    if basis is None:
        basis = np.linalg.qr(rng.standard_normal((dim, 2)))[0]
    basis = np.asarray(basis, dtype=np.float64)
    K = basis.shape[1]
    if coords is None:
        coords = rng.dirichlet(np.ones(K), size=users)
    theta = coords @ basis.T  # (users × dim)
    n = users * pairs_per_user
    x = rng.standard_normal((2 * n, dim))
    user = np.repeat(np.arange(users), pairs_per_user)
    a, b = np.arange(0, 2 * n, 2), np.arange(1, 2 * n, 2)
    ra = (x[a] * theta[user]).sum(1)
    rb = (x[b] * theta[user]).sum(1)
    a_wins = rng.random(n) < 1.0 / (1.0 + np.exp(-beta * (ra - rb)))
    chosen, rejected = np.where(a_wins, a, b), np.where(a_wins, b, a)
    pairs = pd.DataFrame(
        {
            "user": [f"u{u:03d}" for u in user],
            "group": [f"g{i:06d}" for i in range(n)],
            "pair_id": [f"p{i:06d}" for i in range(n)],
            "chosen": chosen.astype(np.int64),
            "rejected": rejected.astype(np.int64),
            "source_split": "train",
            "true_chosen": beta * np.where(a_wins, ra, rb),
            "true_rejected": beta * np.where(a_wins, rb, ra),
        }
    )
    responses = pd.DataFrame({"prompt_id": np.arange(2 * n) // 2})
    fp = hash_obj({"planted": [users, pairs_per_user, dim, beta, seed, basis.round(6).tolist(), np.asarray(coords).round(6).tolist()]})
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        features=Features(x.astype(np.float32)),
        prompt_features=Features(rng.standard_normal((n, dim)).astype(np.float32)),
        split_by="group",
        family="generic",
        fingerprint=fp,
    ).validate()
    truth = {"basis": basis, "coords": np.asarray(coords), "theta": theta, "users": np.array(sorted(set(pairs["user"])))}
    return ds, truth


def opposed_basis(dim: int, shared: float, taste: float, seed: int = 0) -> np.ndarray:
    """Two basis directions ``shared·q ± taste·t`` (q ⟂ t unit vectors): users differ along t."""
    rng = np.random.default_rng(seed + 1)
    q, t = np.linalg.qr(rng.standard_normal((dim, 2)))[0].T
    return np.stack([shared * q + taste * t, shared * q - taste * t], axis=1)

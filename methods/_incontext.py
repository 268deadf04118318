"""Helpers shared by the in-context methods (VPL, GPO): feature standardisation, a cache of the
training rows, support contexts, seeded generators and chunked scoring.

These methods read a user's preferences from a *set of pairs* (the context) instead of holding
per-user parameters. Two rules hold for both:

* during training a target pair's context comes from the same user's other train pairs, never
  from the target's own group (test pairs never share a group with the support, so training must
  not teach the model to exploit shared responses);
* at scoring time a user's context is the first ``cap`` pairs of its support, in the support's
  seeded order (the harness's nested budget order), so it is a deterministic function of the
  split seed and nested in the budget, and it never contains a test pair.

No torch import at module level: the registry imports method modules to list them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from bench.api import Queries, UserPairs
from bench.data import Features
from bench.errors import BenchError
from bench.hashing import tag


def check_positive(name: str, value: Any, integer: bool = True, allow_zero: bool = False) -> None:
    """Reject a bad hyperparameter with a message naming it and the fix."""
    ok_type = isinstance(value, (int, np.integer)) and not isinstance(value, bool) if integer else isinstance(
        value, (int, float, np.integer, np.floating)
    ) and not isinstance(value, bool)
    bound_ok = ok_type and (value >= 0 if allow_zero else value > 0)
    if not bound_ok:
        kind = "an integer" if integer else "a number"
        rel = "≥ 0" if allow_zero else "> 0"
        raise BenchError(f"parameter {name} must be {kind} {rel}, got {value!r}", hint=f"pass --param {name}=<{kind} {rel}>")


def check_range(name: str, lo: int, hi: int) -> None:
    if lo > hi:
        raise BenchError(
            f"parameter range {name} is empty: minimum {lo} > maximum {hi}",
            hint=f"set the minimum of {name} to at most its maximum",
        )


# ---------------------------------------------------------------------------- features


def feature_stats(features: Features, rows: np.ndarray, standardize: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-dimension mean and 1/std over ``rows`` (float32), or (0, 1) when not standardising.

    Dimensions that are constant over ``rows`` keep scale 1 (they carry no information).
    """
    d = features.dim
    if not standardize or len(rows) == 0:
        return np.zeros(d, np.float32), np.ones(d, np.float32)
    s1 = np.zeros(d, np.float64)
    s2 = np.zeros(d, np.float64)
    rows = np.sort(rows)
    for start in range(0, len(rows), RowCache.CHUNK):
        block = features.take(rows[start : start + RowCache.CHUNK])
        s1 += block.sum(axis=0, dtype=np.float64)
        block *= block
        s2 += block.sum(axis=0, dtype=np.float64)
    n = len(rows)
    mean = s1 / n
    var = np.maximum(s2 / n - mean**2, 0.0)
    std = np.sqrt(var)
    tiny = std <= 1e-6 * max(float(std.max()), 1e-30)
    inv = np.where(tiny, 1.0, 1.0 / np.where(tiny, 1.0, std))
    return mean.astype(np.float32), inv.astype(np.float32)


class RowCache:
    """Standardised features of a fixed, sorted set of rows (the seen users' train rows).

    Stored in 16 bits (float16, or bfloat16 when the method computes in bfloat16) and widened
    per batch by :meth:`get`, so the copy is at most the size of the train half of the float16
    feature matrix; it is filled in small chunks (no full-size float32 temporary).
    """

    CHUNK = 1024

    def __init__(self, features: Features, rows: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, device: str, bf16: bool = False):
        import torch

        self.rows = np.unique(np.asarray(rows, dtype=np.int64))
        self.bf16 = bf16
        store = torch.bfloat16 if bf16 else torch.float16
        self.x = torch.empty((len(self.rows), features.dim), dtype=store, device=device)
        for start in range(0, len(self.rows), self.CHUNK):
            block = load_rows(features, self.rows[start : start + self.CHUNK], mean, inv_std)
            self.x[start : start + len(block)] = torch.from_numpy(block).to(device=device, dtype=store)

    @property
    def device(self):
        return self.x.device

    def get(self, idx):
        """Rows at cache positions ``idx`` (a tensor), as float32 (bfloat16 in bf16 mode)."""
        import torch

        x = self.x[idx]
        return x if self.bf16 else x.to(torch.float32)

    def local(self, rows: np.ndarray) -> np.ndarray:
        """Positions of global ``rows`` in the cache (all must be cached)."""
        idx = np.searchsorted(self.rows, rows)
        if len(rows) and (idx.max(initial=0) >= len(self.rows) or (self.rows[np.minimum(idx, len(self.rows) - 1)] != rows).any()):
            raise RuntimeError("row not in the training cache")
        return idx


def train_row_cache(name: str, train: UserPairs, ctx, standardize: bool, bf16: bool):
    """Check that ``train`` can be fitted and build the standardised cache of its rows.

    Returns ``(mean, inv_std, cache)``; raises a clear error when the dataset has no features or
    no seen user has a train pair within the budget.
    """
    if ctx.features is None:
        raise BenchError(f"{name} needs response features", hint="use a dataset that provides features")
    if len(train) == 0:
        raise BenchError(
            f"{name} has no training pairs: no seen user has a train pair within the budget",
            hint="raise --shots or use a dataset whose seen users have train pairs",
        )
    rows = np.unique(np.r_[train.chosen, train.rejected])
    mean, inv_std = feature_stats(ctx.features, rows, standardize)
    return mean, inv_std, RowCache(ctx.features, rows, mean, inv_std, ctx.device, bf16=bf16)


def load_rows(features: Features, rows: np.ndarray, mean: np.ndarray, inv_std: np.ndarray) -> np.ndarray:
    """Standardised float32 features of ``rows`` (in the given order)."""
    x = features.take(rows)
    x -= mean
    x *= inv_std
    return x


# ---------------------------------------------------------------------------- torch pieces


def block_linear(in_features: int, out_features: int, fan_in: int, bias: bool):
    """A column block of a wider Linear layer, initialised as torch initialises the whole layer.

    ``nn.Linear(fan_in, out)`` draws weight and bias from U(±1/√fan_in); a block of its columns
    drawn from the same law is distributed exactly as the official layer's block.
    """
    import math

    import torch
    from torch import nn

    lin = nn.Linear(in_features, out_features, bias=bias)
    bound = 1.0 / math.sqrt(fan_in)
    with torch.no_grad():
        lin.weight.uniform_(-bound, bound)
        if bias:
            lin.bias.uniform_(-bound, bound)
    return lin


def wide(x, lin, bf16: bool):
    """``lin(x)`` for a D-wide input; with ``bf16`` the product runs in bfloat16 (as under the
    official bf16 autocast) and the result returns to float32."""
    import torch
    import torch.nn.functional as F

    if not bf16:
        return lin(x)
    y = F.linear(x.to(torch.bfloat16), lin.weight.to(torch.bfloat16)).float()
    return y if lin.bias is None else y + lin.bias


# ---------------------------------------------------------------------------- contexts


def rank_in_user(user: np.ndarray, n_users: int) -> np.ndarray:
    """Position of each pair within its user's block (pairs sorted by user)."""
    counts = np.bincount(user, minlength=n_users)
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    return np.arange(len(user)) - starts[user]


def support_context(support: UserPairs, cap: int) -> UserPairs:
    """Each user's first ``cap`` support pairs, in support order (deterministic, nested in budget)."""
    order = np.lexsort((np.arange(len(support)), support.user))
    if not (order == np.arange(len(support))).all():
        raise RuntimeError("support pairs must be sorted by user (UserPairs contract)")
    return support.subset(rank_in_user(support.user, support.n_users) < cap)


def rng_for(seed: int, name: str) -> np.random.Generator:
    """A NumPy generator for one named random stream of a method, derived from the split seed."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, tag(name) & 0xFFFFFFFF])


def group_codes(pairs: UserPairs) -> np.ndarray:
    """Dense integer codes of the pairs' groups."""
    _, inv = np.unique(pairs.group, return_inverse=True)
    return inv.astype(np.int64)


# ---------------------------------------------------------------------------- scoring


def user_sorted(queries: Queries) -> np.ndarray:
    """A stable order of the queries by user (query views are already sorted; do not rely on it)."""
    return np.argsort(queries.user, kind="stable")


def make_adam(params, lr: float, device: str, decoupled: bool = False, **kw):
    """``torch.optim.Adam``/``AdamW`` with the fused kernel where torch has one for the device
    (same update rule; on a CPU it is ~8× faster for millions of parameters)."""
    import torch

    cls = torch.optim.AdamW if decoupled else torch.optim.Adam
    try:
        return cls(params, lr=lr, fused=True, **kw)
    except (RuntimeError, TypeError, ValueError):
        return cls(params, lr=lr, **kw)


def cosine_lr(step: int, total: int, warmup: int = 0, floor: float = 0.0) -> float:
    """Multiplier of the base learning rate: linear warm-up, then cosine decay to ``floor``."""
    if warmup > 0 and step < warmup:
        return (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return floor + (1.0 - floor) * 0.5 * (1.0 + np.cos(np.pi * min(1.0, progress)))


def torch_seed_everything(seed: int, name: str):
    """A context manager that seeds torch's global RNG for parameter initialisation only."""
    import torch

    class _Ctx:
        def __enter__(self):
            self._fork = torch.random.fork_rng(devices=[])
            self._fork.__enter__()
            torch.manual_seed((int(seed) * 1_000_003 + tag(name)) & 0x7FFFFFFFFFFFFFFF)
            return self

        def __exit__(self, *exc):
            return self._fork.__exit__(*exc)

    return _Ctx()

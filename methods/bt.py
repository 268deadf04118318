"""BT: one linear Bradley–Terry head shared by every user (the non-personalised baseline)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs, count_tensors
from bench.methods._common import unique_rows, user_balanced_weights
from bench.methods._optim import Adam
from bench.progress import step as progress_step


class BT(Method):
    name: ClassVar[str] = "bt"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    summary: ClassVar[str] = "one linear Bradley–Terry head on RM features, shared by all users (LoRe's rank-1 recipe)"
    kind: ClassVar[str] = "reference"
    test_params: ClassVar[dict] = {"iterations": 60}

    def __init__(self, iterations: int = 1000, lr: float = 0.5, logit_scale: float = 0.01, balance: str = "user"):
        self.iterations = iterations
        self.lr = lr
        self.logit_scale = logit_scale
        self.balance = balance

    def fit(self, train: UserPairs, ctx: Context) -> "BT":
        from scipy.special import expit

        if self.balance not in ("user", "pair"):
            raise ValueError(f"balance must be 'user' or 'pair', got {self.balance!r}")
        if self.iterations < 0 or self.lr <= 0:
            raise ValueError("iterations must be ≥ 0 and lr > 0")
        if ctx.features is None:
            raise ValueError("BT needs features")
        if len(train) == 0:
            raise ValueError("BT has no training pairs (no seen user has a train pair within the budget)")
        self.ctx_ = ctx
        # LoRe initialises V with randn; a seeded torch generator keeps that draw identical.
        import torch

        v = torch.randn(ctx.features.dim, generator=ctx.torch_generator()).numpy().astype(np.float32)
        d = ctx.features.diff(train.chosen, train.rejected)
        w = user_balanced_weights(train.user, train.n_users) if self.balance == "user" else np.ones(len(train))
        w = w.astype(np.float32)
        scale = np.float32(self.logit_scale)
        opt = Adam(v, lr=self.lr)
        for it in range(self.iterations):
            progress_step(it, self.iterations, "iteration")
            logits = (d @ v) * scale
            # d/dv of Σ w·softplus(−logit) = −scale · dᵀ (w · σ(−logit))
            r = (-scale) * w * expit(-logits).astype(np.float32)
            opt.step(r @ d)
        logits = (d @ v) * scale
        self.final_loss_ = float(np.sum(w * np.logaddexp(0, -logits)))
        self.v_ = v
        return self

    def score(self, queries: Queries) -> np.ndarray:
        rows, ia, ib = unique_rows(queries)
        s = self.ctx_.features.project(self.v_, rows)
        return (s[ia] - s[ib]).astype(np.float64)

    def param_count(self) -> ParamCount:
        return ParamCount(shared=self.ctx_.features.dim, per_user=0)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(shared=count_tensors(self.v_), per_user=0)

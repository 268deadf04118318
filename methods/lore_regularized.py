"""LoRe as its official PRISM script runs it (``lore-regularized``).

facebookresearch/LoRe ``PRISM/train_basis.py`` calls ``run_regularized`` (``utils.py``), which fits
the basis with ``solve_regularized_simplex`` → the ``LoRe_regularized`` module: 20,000
*alternating* Adam steps at lr 0.5 (first the weight logits with the basis frozen, then the
basis with the weights frozen, each with its own Adam), the pair-mean Bradley–Terry loss on
``x ᵀ V softmax(w_u) / 100``, and on the basis step a penalty
``α_t · mean_k (1 − cos(V_k, v_ref))`` that pulls every basis column towards the reference
reward model's direction, with ``α_t`` 0 for the first 20 % of steps, rising linearly to
``α = 10⁴`` at 80 %, then constant. Columns no seen user weighs with at least 10⁻² are pruned.
Unseen users fit new weights on the kept basis: 500 Adam steps at lr 0.5.

This file is the harness's own NumPy implementation (gradients written out, no autograd);
``methods/lore_regularized.md`` lists where it departs from the official code (the reference
direction ``v_ref`` foremost: the official script reads the Skywork reward head).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.api import Context, ParamCount, UserPairs
from bench.errors import BenchError
from bench.methods._optim import Adam
from bench.methods.lore import LoRe, softmax_backward, softmax_rows, user_sum_matrix

REFERENCES = ("rm_head", "mean_diff")


def reference_direction(ctx: Context, train: UserPairs, how: str) -> tuple[np.ndarray, str]:
    """(D,) unit reference reward direction, and where it came from.

    ``rm_head``: the linear head of the dataset's reward model, recovered by least squares from the
    stored RM scores (``score = x · head + b`` for the last-token hidden state ``x``); a dataset
    without RM scores falls back to ``mean_diff``: the mean chosen − rejected feature difference of
    the seen users' train pairs.
    """
    feats = ctx.features
    if how == "rm_head" and ctx.rm_score is not None:
        score = np.asarray(ctx.rm_score, dtype=np.float64)
        ok = np.flatnonzero(np.isfinite(score))
        if len(ok) > feats.dim:
            rows = ok[np.unique(np.linspace(0, len(ok) - 1, num=min(len(ok), 2 * feats.dim + 256)).astype(np.int64))]
            x = feats.take(rows).astype(np.float64)
            x = np.c_[x, np.ones(len(x))]
            y = score[rows]
            gram = x.T @ x
            gram[np.diag_indices_from(gram)] += 1e-6 * np.trace(gram) / len(gram)
            head = np.linalg.solve(gram, x.T @ y)[:-1]
            n = np.linalg.norm(head)
            if np.isfinite(n) and n > 0:
                return (head / n).astype(np.float32), "rm_head (least squares on the stored RM scores)"
    d = feats.diff(train.chosen, train.rejected).astype(np.float64).mean(axis=0)
    n = np.linalg.norm(d)
    if not np.isfinite(n) or n == 0:
        raise BenchError("lore-regularized: no reference direction (the seen pairs' mean difference is zero)")
    why = "mean_diff" if how == "mean_diff" else "mean_diff (the dataset has no RM scores)"
    return (d / n).astype(np.float32), why


class LoReRegularized(LoRe):
    name: ClassVar[str] = "lore-regularized"
    version: ClassVar[str] = "1"
    summary: ClassVar[str] = "LoRe as its PRISM script runs it: 20k alternating steps, basis pulled to the RM direction (α 1e4)"
    test_params: ClassVar[dict] = {"n_basis": 3, "iterations": 60, "adapt_iterations": 40}

    def __init__(
        self,
        n_basis: int = 25,
        iterations: int = 20000,
        lr: float = 0.5,
        logit_scale: float = 0.01,
        alpha: float = 1e4,
        prune: float = 1e-2,
        reference: str = "rm_head",
        adapt_iterations: int = 500,
        adapt_lr: float = 0.5,
        balance: str = "pair",
        zero_shot: str = "mean",
    ):
        super().__init__(n_basis, iterations, lr, logit_scale, adapt_iterations, adapt_lr, balance, zero_shot)
        self.alpha = alpha
        self.prune = prune
        self.reference = reference

    def fit(self, train: UserPairs, ctx: Context) -> "LoReRegularized":
        from scipy.special import expit

        self._check_params()
        if not self.alpha >= 0 or not 0 <= self.prune < 1:
            raise BenchError(f"lore-regularized: alpha must be ≥ 0 and prune in [0, 1), got {self.alpha!r}, {self.prune!r}")
        if self.reference not in REFERENCES:
            raise BenchError(f"lore-regularized: reference must be one of {REFERENCES}, got {self.reference!r}")
        if ctx.features is None:
            raise BenchError("lore-regularized needs features", hint="run it on a dataset with the 'features' capability")
        if len(train) == 0:
            raise BenchError("lore-regularized has no training pairs", hint="raise --shots or check the dataset's train halves")
        self.ctx_ = ctx
        import torch

        K, D = self.n_basis, ctx.features.dim
        seen_idx = np.flatnonzero(train.seen)
        local = np.full(train.n_users, -1, dtype=np.int64)
        local[seen_idx] = np.arange(len(seen_idx))
        u = local[train.user]
        if (u < 0).any():
            raise BenchError("lore-regularized.fit received pairs of unseen users", hint="fit sees seen users' train pairs only")
        n_seen = len(seen_idx)
        # The official module's draws: W = rand(N, K) (uniform), then V = randn(D, K).
        g = ctx.torch_generator()
        W = torch.rand(n_seen, K, generator=g).numpy().astype(np.float32)
        V = torch.randn(D, K, generator=g).numpy().astype(np.float32)
        ref, self.reference_source_ = reference_direction(ctx, train, self.reference)

        d = ctx.features.diff(train.chosen, train.rejected)
        if self.balance == "user":
            from bench.methods._common import user_balanced_weights

            pw = user_balanced_weights(train.user, train.n_users).astype(np.float32)
        else:  # the official loss: the mean over all pairs
            pw = np.full(len(train), 1.0 / max(len(train), 1), dtype=np.float32)
        m = user_sum_matrix(u, n_seen)
        sc = np.float32(self.logit_scale)
        opt_w, opt_v = Adam(W, lr=self.lr), Adam(V, lr=self.lr)
        T = self.iterations
        lo, hi = int(0.2 * T), int(0.8 * T)
        for step in range(T):
            alpha_t = 0.0 if step < lo else (float(self.alpha) if step >= hi else float(self.alpha) * (step - lo) / (hi - lo))
            z = d @ V
            # weights step (basis frozen)
            s = softmax_rows(W)
            logits = (z * s[u]).sum(axis=1) * sc
            r = (-sc) * pw * expit(-logits).astype(np.float32)
            g_s = np.asarray(m @ (z * r[:, None]), dtype=np.float32)
            opt_w.step(softmax_backward(s, g_s))
            # basis step (weights frozen at their new value)
            su = softmax_rows(W)[u]
            logits = (z * su).sum(axis=1) * sc
            r = (-sc) * pw * expit(-logits).astype(np.float32)
            g_v = d.T @ (su * r[:, None])
            if alpha_t > 0:
                norms = np.linalg.norm(V, axis=0)
                norms = np.maximum(norms, 1e-12)  # F.normalize's eps
                cos = (ref @ V) / norms
                g_v = g_v - np.float32(alpha_t / K) * (ref[:, None] / norms - V * (cos / norms**2))
            opt_v.step(g_v.astype(np.float32))
        probs = softmax_rows(W)
        keep = probs.max(axis=0) >= self.prune if n_seen else np.ones(K, dtype=bool)
        if not keep.any():
            keep[np.argmax(probs.max(axis=0))] = True
        z = d @ V
        logits = (z * probs[u]).sum(axis=1) * sc
        self.final_loss_ = float(np.sum(pw * np.logaddexp(0, -logits)))
        self.train_accuracy_ = float(np.mean(logits > 0))
        del d
        self.kept_ = int(keep.sum())
        self.n_basis_fitted_ = K
        # Kept columns; seen users keep their (un-renormalised) probabilities on them, as the
        # official code returns ``softmax(W)[:, mask]`` (accuracy is invariant to the scale).
        self.V_ = V[:, keep]
        self._probs_kept = probs[:, keep]
        self.W_ = np.log(np.maximum(self._probs_kept, 1e-30)).astype(np.float32)
        self.n_basis = self.kept_  # adaptation and the prior use the kept basis
        self.seen_index_ = seen_idx
        has_pairs = np.bincount(u, minlength=n_seen) > 0
        self.seen_has_pairs_ = has_pairs
        self.prior_ = self._prior(softmax_rows(self.W_)[has_pairs])
        self.weights_ = self._seen_weights(train.n_users)
        return self

    def _seen_weights(self, n_users: int) -> np.ndarray:
        out = np.tile(self.prior_, (n_users, 1))
        rows = self.seen_index_[self.seen_has_pairs_]
        out[rows] = self._probs_kept[self.seen_has_pairs_]
        return out

    def get_params(self):
        p = super().get_params()
        p["n_basis"] = getattr(self, "n_basis_fitted_", self.n_basis)
        return p

    def param_count(self) -> ParamCount:
        return ParamCount(shared=self.ctx_.features.dim * self.kept_, per_user=self.kept_)

    def extra_meta(self) -> dict:
        out = super().extra_meta()
        out.update({"basis_kept": self.kept_, "basis_fitted": self.n_basis_fitted_, "reference": self.reference_source_})
        return out

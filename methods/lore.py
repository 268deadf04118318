"""LoRe: a shared low-rank reward basis V (D×K) and per-user simplex weights (Bose et al. 2025).

User u's reward is r_u(x) = xᵀ V softmax(w_u). Seen users' weights and the basis are learned
jointly by full-batch Adam on the user-balanced Bradley–Terry loss; an unseen user gets new weights
fitted on its support pairs with V frozen. The whole optimisation runs in NumPy (two
``n × D × K`` products per iteration for the basis, then ``n × K`` work for the weights).
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs, count_tensors
from bench.errors import BenchError
from bench.methods._common import unique_rows, user_balanced_weights
from bench.methods._optim import Adam
from bench.progress import step as progress_step

ZERO_SHOT = ("mean", "uniform")


def softmax_rows(w: np.ndarray) -> np.ndarray:
    z = w - w.max(axis=1, keepdims=True)
    np.exp(z, out=z)
    z /= z.sum(axis=1, keepdims=True)
    return z


def softmax_backward(s: np.ndarray, g: np.ndarray) -> np.ndarray:
    """Gradient w.r.t. the logits of ``s = softmax(w)`` (rows), given the gradient ``g`` w.r.t. s."""
    return s * (g - (s * g).sum(axis=1, keepdims=True))


def user_sum_matrix(user: np.ndarray, n_users: int):
    """Sparse (n_users × n_pairs) 0/1 matrix: ``M @ X`` sums the rows of X per user."""
    from scipy.sparse import csr_matrix

    n = len(user)
    return csr_matrix((np.ones(n, dtype=np.float32), (user, np.arange(n))), shape=(n_users, n))


def fit_simplex_weights(
    z: np.ndarray,
    user: np.ndarray,
    n_users: int,
    w0: np.ndarray,
    iterations: int,
    lr: float,
    scale: float,
    pair_weight: np.ndarray,
) -> np.ndarray:
    """Fit the weight logits of many users at once with the basis frozen.

    ``z`` (m × K) holds each support pair's basis margins ``(x_c − x_r)ᵀ V``; ``user`` (m,) the row
    of its user in ``w0`` (n_users × K). Users are independent (their losses share no parameter)
    and Adam is per coordinate, so one batched problem equals one problem per user.
    """
    from scipy.special import expit

    w = w0.astype(np.float32, copy=True)
    if len(z) == 0 or iterations == 0:
        return w
    m = user_sum_matrix(user, n_users)
    pw = pair_weight.astype(np.float32)
    opt = Adam(w, lr=lr)
    sc = np.float32(scale)
    for _ in range(iterations):
        s = softmax_rows(w)
        logits = (z * s[user]).sum(axis=1) * sc
        r = (-sc) * pw * expit(-logits).astype(np.float32)
        g_s = np.asarray(m @ (z * r[:, None]), dtype=np.float32)
        opt.step(softmax_backward(s, g_s))
    return w


class LoRe(Method):
    name: ClassVar[str] = "lore"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    summary: ClassVar[str] = "shared low-rank reward basis V (D×K) + per-user simplex weights; unseen users refit weights only"
    kind: ClassVar[str] = "personalized parameter"
    test_params: ClassVar[dict] = {"n_basis": 3, "iterations": 60, "adapt_iterations": 40}

    def __init__(
        self,
        n_basis: int = 25,
        iterations: int = 1000,
        lr: float = 0.5,
        logit_scale: float = 0.01,
        adapt_iterations: int = 500,
        adapt_lr: float = 0.1,
        balance: str = "user",
        zero_shot: str = "mean",
    ):
        self.n_basis = n_basis
        self.iterations = iterations
        self.lr = lr
        self.logit_scale = logit_scale
        self.adapt_iterations = adapt_iterations
        self.adapt_lr = adapt_lr
        self.balance = balance
        self.zero_shot = zero_shot

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        if not isinstance(self.n_basis, int) or self.n_basis < 1:
            raise BenchError(f"lore: n_basis must be an integer ≥ 1, got {self.n_basis!r}", hint="e.g. --param lore.n_basis=5")
        for k in ("iterations", "adapt_iterations"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 0:
                raise BenchError(f"lore: {k} must be an integer ≥ 0, got {v!r}")
        for k in ("lr", "adapt_lr", "logit_scale"):
            if not getattr(self, k) > 0:
                raise BenchError(f"lore: {k} must be > 0, got {getattr(self, k)!r}")
        if self.balance not in ("user", "pair"):
            raise BenchError(f"lore: balance must be 'user' or 'pair', got {self.balance!r}")
        if self.zero_shot not in ZERO_SHOT:
            raise BenchError(
                f"lore: zero_shot must be one of {ZERO_SHOT}, got {self.zero_shot!r}",
                hint="'mean' gives a user without support the seen users' mean weights; 'uniform' gives 1/K each",
            )

    # ------------------------------------------------------------------ fit
    def fit(self, train: UserPairs, ctx: Context) -> "LoRe":
        from scipy.special import expit

        self._check_params()
        if ctx.features is None:
            raise BenchError("lore needs features", hint="run it on a dataset with the 'features' capability")
        if len(train) == 0:
            raise BenchError(
                "lore has no training pairs (no seen user has a train pair within the budget)",
                hint="raise --shots or check the dataset's train halves",
            )
        self.ctx_ = ctx
        import torch

        K, D = self.n_basis, ctx.features.dim
        seen_idx = np.flatnonzero(train.seen)
        local = np.full(train.n_users, -1, dtype=np.int64)
        local[seen_idx] = np.arange(len(seen_idx))
        u = local[train.user]
        if (u < 0).any():
            raise BenchError("lore.fit received pairs of unseen users", hint="fit sees seen users' train pairs only")
        n_seen = len(seen_idx)
        # Same draws as the official module: W = randn(N, K) first, then V = randn(D, K).
        g = ctx.torch_generator()
        W = torch.randn(n_seen, K, generator=g).numpy().astype(np.float32)
        V = torch.randn(D, K, generator=g).numpy().astype(np.float32)

        d = ctx.features.diff(train.chosen, train.rejected)
        pw = user_balanced_weights(train.user, train.n_users) if self.balance == "user" else np.ones(len(train))
        pw = pw.astype(np.float32)
        m = user_sum_matrix(u, n_seen)
        sc = np.float32(self.logit_scale)
        opt_v, opt_w = Adam(V, lr=self.lr), Adam(W, lr=self.lr)  # one joint Adam = one per tensor
        for it in range(self.iterations):
            progress_step(it, self.iterations, "iteration")
            s = softmax_rows(W)
            su = s[u]
            z = d @ V
            logits = (z * su).sum(axis=1) * sc
            r = (-sc) * pw * expit(-logits).astype(np.float32)
            g_s = np.asarray(m @ (z * r[:, None]), dtype=np.float32)
            g_v = d.T @ (su * r[:, None])
            opt_v.step(g_v)
            opt_w.step(softmax_backward(s, g_s))
        z = d @ V
        logits = (z * softmax_rows(W)[u]).sum(axis=1) * sc
        self.final_loss_ = float(np.sum(pw * np.logaddexp(0, -logits)))
        self.train_accuracy_ = float(np.mean(logits > 0))
        del d
        self.V_ = V
        self.W_ = W
        self.seen_index_ = seen_idx
        has_pairs = np.bincount(u, minlength=n_seen) > 0
        self.seen_has_pairs_ = has_pairs
        self.prior_ = self._prior(softmax_rows(W)[has_pairs])
        self.weights_ = self._seen_weights(train.n_users)
        return self

    def _prior(self, s_seen: np.ndarray) -> np.ndarray:
        K = self.n_basis
        if self.zero_shot == "uniform" or len(s_seen) == 0:
            return np.full(K, 1.0 / K, dtype=np.float32)
        return s_seen.mean(axis=0).astype(np.float32)

    def _seen_weights(self, n_users: int) -> np.ndarray:
        """(U × K) simplex weights: fitted for seen users with train pairs, the prior for the rest."""
        out = np.tile(self.prior_, (n_users, 1))
        s = softmax_rows(self.W_)
        rows = self.seen_index_[self.seen_has_pairs_]
        out[rows] = s[self.seen_has_pairs_]
        return out

    # ------------------------------------------------------------------ adapt
    def adapt(self, support: UserPairs) -> "LoRe":
        import torch

        weights = self._seen_weights(support.n_users)
        unseen_pairs = ~support.seen[support.user]
        sup = support.subset(unseen_pairs)
        counts = sup.counts()
        users = np.flatnonzero(counts > 0)
        if len(users) and self.n_basis > 1:
            # One randn row per user of the split (index order), so a user's start point does not
            # depend on which other users have support.
            w0_all = torch.randn(support.n_users, self.n_basis, generator=self.ctx_.torch_generator(1)).numpy()
            local = np.full(support.n_users, -1, dtype=np.int64)
            local[users] = np.arange(len(users))
            z = self._basis_margins(sup.chosen, sup.rejected)
            pw = (1.0 / counts[sup.user]).astype(np.float32)  # each user's mean loss (PersonalizeBatch)
            w = fit_simplex_weights(
                z, local[sup.user], len(users), w0_all[users], self.adapt_iterations, self.adapt_lr, self.logit_scale, pw
            )
            weights[users] = softmax_rows(w)
        elif len(users):
            weights[users] = 1.0  # K = 1: the softmax of one weight is 1 (the official code skips the fit)
        self.weights_ = weights
        return self

    def _basis_margins(self, chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
        """(m × K) ``(x_c − x_r)ᵀ V`` without materialising the m × D differences."""
        rows, inv = np.unique(np.r_[chosen, rejected], return_inverse=True)
        f = self.ctx_.features.project(self.V_, rows)
        n = len(chosen)
        return f[inv[:n]] - f[inv[n:]]

    # ------------------------------------------------------------------ score
    def score(self, queries: Queries) -> np.ndarray:
        rows, ia, ib = unique_rows(queries)
        f = self.ctx_.features.project(self.V_, rows)
        s = self.weights_[queries.user]
        return (((f[ia] - f[ib]) * s).sum(axis=1) * np.float32(self.logit_scale)).astype(np.float64)

    # ------------------------------------------------------------------ parameters
    def param_count(self) -> ParamCount:
        return ParamCount(shared=self.ctx_.features.dim * self.n_basis, per_user=self.n_basis)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(shared=count_tensors(self.V_), per_user=int(self.W_.shape[1]))

    def extra_meta(self) -> dict:
        return {
            "final_loss": getattr(self, "final_loss_", None),
            "train_accuracy": getattr(self, "train_accuracy_", None),
            "seen_users_fitted": int(self.seen_has_pairs_.sum()),
            "weights_trained": int(self.W_.size),
        }

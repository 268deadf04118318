"""A tiny MRM stand-in for report tests: the parameters the paper sweeps, the per-epoch hook, ablations.

Shared head v trained by full-batch gradient steps on the seen users' BT loss, users weighted by an
RPO-like rule (σ((L − τ)/γ), hard filtering at γ = 0, τ the (1 − ρ) quantile of a meta-batch's
losses); each user then moves v towards its own mean support difference. After every epoch it calls
``self.on_epoch(epoch, self)`` when that attribute is set — the contract the selection-bias analysis
relies on. Cheap at D = 32; not a model of anything.
"""

from __future__ import annotations

import numpy as np

from bench.api import Method, ParamCount, count_tensors


class ToyMRM(Method):
    name = "toy-mrm"
    requires = frozenset({"features"})
    kind = "meta-learning"
    summary = "test-only stand-in for MRM"
    test_params = {"epochs": 4}
    use_rpo = True
    adapt_users = True

    def __init__(self, epochs: int = 6, rho: float = 0.5, gamma: float = 0.5, meta_batch: int = 2, lr: float = 2.0,
                 step: float = 0.5):
        self.epochs = epochs
        self.rho = rho
        self.gamma = gamma
        self.meta_batch = meta_batch
        self.lr = lr
        self.step = step

    def fit(self, train, ctx):
        from scipy.special import expit

        self.ctx_ = ctx
        d = ctx.features.diff(train.chosen, train.rejected).astype(np.float64)
        rng = np.random.default_rng(ctx.seed)
        v = self.v_ = np.zeros(d.shape[1])  # updated in place: the hook sees the current head
        users = np.flatnonzero(np.bincount(train.user, minlength=train.n_users) > 0)
        for epoch in range(self.epochs):
            order = rng.permutation(users)
            for start in range(0, len(order), self.meta_batch):
                batch = np.sort(order[start:start + self.meta_batch])
                mask = np.isin(train.user, batch)
                m = d[mask] @ v
                loss_pair = np.logaddexp(0, -m)
                u = np.searchsorted(batch, train.user[mask])
                L = np.bincount(u, weights=loss_pair, minlength=len(batch)) / np.maximum(np.bincount(u, minlength=len(batch)), 1)
                if self.use_rpo and len(batch) > 1:
                    tau = np.quantile(L, 1 - self.rho)
                    # losses differ by ~0.1 between users here: a scaled γ makes ρ and γ visibly matter
                    w = (L > tau).astype(float) if self.gamma == 0 else expit((L - tau) / (0.05 * self.gamma))
                else:
                    w = np.ones(len(batch))
                g = -(d[mask] * (w[u] * expit(-m))[:, None]).sum(0) / max(mask.sum(), 1)
                v -= self.lr * g
            hook = getattr(self, "on_epoch", None)
            if hook is not None:
                hook(epoch, self)
        return self

    def adapt(self, support):
        f = self.ctx_.features
        d = f.diff(support.chosen, support.rejected).astype(np.float64)
        n = np.bincount(support.user, minlength=support.n_users)
        sums = np.zeros((support.n_users, d.shape[1]))
        np.add.at(sums, support.user, d)
        mean = sums / np.maximum(n, 1)[:, None]
        self.user_v_ = self.v_[None, :] + (self.step * mean if self.adapt_users else np.zeros_like(mean))
        return self

    def score(self, queries):
        f = self.ctx_.features
        da = f.take(queries.a).astype(np.float64) - f.take(queries.b).astype(np.float64)
        return np.einsum("nd,nd->n", da, self.user_v_[queries.user])

    def param_count(self):
        return ParamCount(shared=self.ctx_.features.dim, per_user=self.ctx_.features.dim if self.adapt_users else 0)

    def trained_param_count(self):
        return ParamCount(shared=count_tensors(self.v_), per_user=self.user_v_.shape[1] if self.adapt_users else 0)


class ToyMRMNoRPO(ToyMRM):
    name = "toy-mrm-no-rpo"
    use_rpo = False


class ToyMRMNoAdapt(ToyMRM):
    name = "toy-mrm-no-adapt"
    adapt_users = False


class NoHook(ToyMRM):
    """Never calls on_epoch: the selection-bias analysis must say so, not crash."""

    name = "toy-nohook"

    def fit(self, train, ctx):
        hook, self.on_epoch = getattr(self, "on_epoch", None), None
        try:
            return super().fit(train, ctx)
        finally:
            self.on_epoch = hook

"""The MRM paper's ablations (Table 2) and a control, each registered as its own method.

* ``mrm-no-meta`` — the same model without the bi-level formulation: bases and each seen user's
  own logits are trained jointly on the user's whole train half; every user then fits its logits
  on its support with the bases frozen.
* ``mrm-no-rpo`` — the outer objective is the plain sum of the meta-batch's query losses.
* ``mrm-no-basis`` — the basis model is replaced by a single MLP whose every weight is adapted in
  the inner loop and meta-learned in the outer loop (MAML on an MLP).
* ``mrm-no-adapt`` — a control: zero inner steps in training and evaluation, so every user is
  scored by the meta-learned w0 (how much does the per-user step contribute?).

Each class has its own card ``methods/<name>.md``.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.api import Context, ParamCount, Queries, UserPairs, count_tensors
from bench.errors import BenchError
from bench.methods._common import unique_rows
from bench.methods.mrm import ADAM_BETAS, MRM, _Epoch, _Layout, adam_eps, combine_losses, cosine_lambda
from bench.progress import step as progress_step
from bench.threads import torch_threads


def torch_addcmul(p, a, b, value: float):
    """p + value·a·b (one fused pass)."""
    import torch

    return torch.addcmul(p, a, b, value=value)


class _Ablation(MRM):
    @classmethod
    def card_path(cls) -> Path:
        return Path(__file__).parent / f"{cls.name}.md"


# ============================================================================ w/o RPO


class MRMNoRPO(_Ablation):
    name: ClassVar[str] = "mrm-no-rpo"
    summary: ClassVar[str] = "MRM ablation (Table 2): plain sum of the meta-batch's query losses instead of RPO"

    objective = "sum"  # fixed (class level): not a parameter of this ablation
    rho = 0.5
    gamma = 0.5

    def __init__(
        self,
        n_basis: int = 2,
        feature_scale: float = 0.01,
        epochs: int = 200,
        meta_batch: int = 2,
        inner_lr: float = 1e-3,
        meta_lr: float = 1e-3,
        inner_steps: int = 1,
        eval_inner_steps: int = 1,
        inner_optimizer: str = "adam",
        query_fraction: float = 0.9,
        warmup: float = 0.05,
        grad_clip: float | None = 1.0,
        early_stopping: bool = False,
        val_fraction: float = 0.1,
        patience: int | None = 20,
        train_inner_adam: str = "higher-0.2.1",
    ):
        self.train_inner_adam = train_inner_adam
        self.n_basis = n_basis
        self.feature_scale = feature_scale
        self.epochs = epochs
        self.meta_batch = meta_batch
        self.inner_lr = inner_lr
        self.meta_lr = meta_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = inner_optimizer
        self.query_fraction = query_fraction
        self.warmup = warmup
        self.grad_clip = grad_clip
        self.early_stopping = early_stopping
        self.val_fraction = val_fraction
        self.patience = patience


# ============================================================================ no per-user step


class MRMNoAdapt(_Ablation):
    name: ClassVar[str] = "mrm-no-adapt"
    summary: ClassVar[str] = "MRM control: zero inner steps in training and evaluation (every user scored by w0)"

    inner_steps = 0
    eval_inner_steps = 0
    inner_lr = 1e-3  # unused with zero steps
    inner_optimizer = "adam"
    train_inner_adam = "higher-0.2.1"

    def __init__(
        self,
        n_basis: int = 2,
        feature_scale: float = 0.01,
        epochs: int = 200,
        meta_batch: int = 2,
        meta_lr: float = 1e-3,
        objective: str = "rpo",
        rho: float = 0.5,
        gamma: float = 0.5,
        query_fraction: float = 0.9,
        warmup: float = 0.05,
        grad_clip: float | None = 1.0,
        early_stopping: bool = False,
        val_fraction: float = 0.1,
        patience: int | None = 20,
    ):
        self.n_basis = n_basis
        self.feature_scale = feature_scale
        self.epochs = epochs
        self.meta_batch = meta_batch
        self.meta_lr = meta_lr
        self.objective = objective
        self.rho = rho
        self.gamma = gamma
        self.query_fraction = query_fraction
        self.warmup = warmup
        self.grad_clip = grad_clip
        self.early_stopping = early_stopping
        self.val_fraction = val_fraction
        self.patience = patience


# ============================================================================ w/o meta-learning


class MRMNoMeta(_Ablation):
    name: ClassVar[str] = "mrm-no-meta"
    summary: ClassVar[str] = (
        "MRM ablation (Table 2): same basis model, per-user logits trained jointly with the bases "
        "(no bi-level objective); each user then fits its logits on its support"
    )
    kind: ClassVar[str] = "personalized parameter"
    test_params: ClassVar[dict] = {"epochs": 4, "adapt_steps": 20}

    _per_user_training: ClassVar[bool] = True
    inner_steps = 0
    inner_lr = 1e-3  # unused: no inner loop in training
    query_fraction = 0.9  # unused: no support/query split
    inner_optimizer = "adam"  # adaptation: a fresh Adam, ``adapt_steps`` full-batch steps
    train_inner_adam = "higher-0.2.1"  # unused: no inner loop in training

    def __init__(
        self,
        n_basis: int = 2,
        feature_scale: float = 0.01,
        epochs: int = 200,
        meta_batch: int = 2,
        meta_lr: float = 1e-3,
        objective: str = "rpo",
        rho: float = 0.5,
        gamma: float = 0.5,
        warmup: float = 0.05,
        grad_clip: float | None = 1.0,
        adapt_steps: int = 100,
        adapt_lr: float = 0.05,
        early_stopping: bool = False,
        val_fraction: float = 0.1,
        patience: int | None = 20,
    ):
        self.n_basis = n_basis
        self.feature_scale = feature_scale
        self.epochs = epochs
        self.meta_batch = meta_batch
        self.meta_lr = meta_lr
        self.objective = objective
        self.rho = rho
        self.gamma = gamma
        self.warmup = warmup
        self.grad_clip = grad_clip
        self.adapt_steps = adapt_steps
        self.adapt_lr = adapt_lr
        self.early_stopping = early_stopping
        self.val_fraction = val_fraction
        self.patience = patience

    @property
    def eval_inner_steps(self) -> int:  # the adaptation length, for MRM's code paths
        return self.adapt_steps

    def _check_params(self) -> None:
        if not isinstance(self.adapt_steps, (int, np.integer)) or isinstance(self.adapt_steps, bool) or self.adapt_steps < 0:
            raise BenchError(f"{self.name}: adapt_steps must be an integer ≥ 0, got {self.adapt_steps!r}", hint="e.g. 100")
        if not self.adapt_lr > 0:
            raise BenchError(f"{self.name}: adapt_lr must be > 0, got {self.adapt_lr!r}", hint="e.g. 0.05")
        super()._check_params()

    def _eval_steps(self) -> tuple[int, str, float]:
        return int(self.adapt_steps), "adam", float(self.adapt_lr)

    def _population_logits(self) -> np.ndarray:
        """Adaptation starts from the mean of the seen users' trained logits."""
        return self.user_weights_fit_.astype(np.float64).mean(axis=0).astype(np.float32)

    def param_count(self) -> ParamCount:
        K, D = int(self.n_basis), self.ctx_.features.dim
        return ParamCount(shared=K * D, per_user=K if int(self.adapt_steps) > 0 else 0)

    def trained_param_count(self) -> ParamCount:
        K = int(self.n_basis)
        per_user = self.user_weights_fit_.shape[1] if int(self.adapt_steps) > 0 else 0
        assert self.user_weights_fit_.shape[1] == K
        return ParamCount(shared=count_tensors(self.W_), per_user=per_user)


# ============================================================================ w/o basis combination


class MRMNoBasis(_Ablation):
    """MAML on a one-hidden-layer MLP: every weight is adapted per user and meta-learned.

    ``r(x) = vᵀ act(W1 (s·x) + b1)`` with ``W1 ∈ R^{hidden×D}``; the output bias is omitted (it
    cancels in every margin). Written with torch autograd (second order through the inner loop);
    the users of a meta-batch are batched by expanding the parameters to one copy per user.
    """

    name: ClassVar[str] = "mrm-no-basis"
    summary: ClassVar[str] = (
        "MRM ablation (Table 2): a single MLP replaces the basis combination; all its weights are "
        "adapted in the inner loop and meta-learned in the outer loop (MAML)"
    )
    test_params: ClassVar[dict] = {"epochs": 2, "hidden": 4}

    n_basis = 2  # unused (no basis combination)

    def __init__(
        self,
        hidden: int = 32,
        activation: str = "relu",
        feature_scale: float = 0.01,
        epochs: int = 200,
        meta_batch: int = 2,
        inner_lr: float = 1e-3,
        meta_lr: float = 1e-3,
        inner_steps: int = 1,
        eval_inner_steps: int = 1,
        inner_optimizer: str = "adam",
        objective: str = "rpo",
        rho: float = 0.5,
        gamma: float = 0.5,
        query_fraction: float = 0.9,
        warmup: float = 0.05,
        grad_clip: float | None = 1.0,
        eval_chunk: int = 64,
        train_inner_adam: str = "higher-0.2.1",
    ):
        self.train_inner_adam = train_inner_adam
        self.hidden = hidden
        self.activation = activation
        self.feature_scale = feature_scale
        self.epochs = epochs
        self.meta_batch = meta_batch
        self.inner_lr = inner_lr
        self.meta_lr = meta_lr
        self.inner_steps = inner_steps
        self.eval_inner_steps = eval_inner_steps
        self.inner_optimizer = inner_optimizer
        self.objective = objective
        self.rho = rho
        self.gamma = gamma
        self.query_fraction = query_fraction
        self.warmup = warmup
        self.grad_clip = grad_clip
        self.eval_chunk = eval_chunk

    early_stopping = False  # not offered for this ablation
    val_fraction = 0.1
    patience = None
    # Private: True runs the autograd reference (second-order ``torch.autograd`` through the
    # expanded weights, :meth:`_inner`); False the hand-derived one-step path
    # (:meth:`_meta_step`), which is used whenever ``inner_steps`` / ``eval_inner_steps`` is 1.
    # ``tests/test_mrm.py`` compares the two.
    _reference: ClassVar[bool] = False

    def _check_params(self) -> None:
        if not isinstance(self.hidden, (int, np.integer)) or isinstance(self.hidden, bool) or self.hidden < 1:
            raise BenchError(f"{self.name}: hidden must be an integer ≥ 1, got {self.hidden!r}", hint="e.g. 32")
        if self.activation not in ("relu", "linear"):
            raise BenchError(f"{self.name}: activation must be 'relu' or 'linear', got {self.activation!r}", hint="relu")
        if not isinstance(self.eval_chunk, (int, np.integer)) or self.eval_chunk < 1:
            raise BenchError(f"{self.name}: eval_chunk must be an integer ≥ 1, got {self.eval_chunk!r}", hint="e.g. 64")
        super()._check_params()

    # ------------------------------------------------------------------ the network (torch)
    def _reward(self, params, X):
        """Rewards of X (B × n × D, already scaled) under per-user params (B × ...)."""
        import torch

        W1, b1, v = params
        z = torch.bmm(X, W1.transpose(1, 2)) + b1[:, None, :]
        if self.activation == "relu":
            z = torch.relu(z)
        return torch.bmm(z, v[:, :, None])[..., 0]

    def _user_losses(self, params, Xc, Xr, weight):
        """Per-user weighted mean BT loss (weight rows sum to 1 over each user's real pairs)."""
        import torch.nn.functional as F

        margin = self._reward(params, Xc) - self._reward(params, Xr)
        return (F.softplus(-margin) * weight).sum(dim=1)

    def _inner(self, params, Xc, Xr, weight, steps: int, create_graph: bool, eps_hat: bool = False):
        """``steps`` updates of every user's copy of the params, from a fresh optimiser state
        (``eps_hat``: higher 0.2.1's placement of Adam's ε, see ``mrm.adam_eps``)."""
        import torch

        b1, b2 = ADAM_BETAS
        lr = float(self.inner_lr)
        state = [None] * len(params)
        for t in range(1, steps + 1):
            loss = self._user_losses(params, Xc, Xr, weight).sum()
            grads = torch.autograd.grad(loss, params, create_graph=create_graph)
            new = []
            for i, (p, g) in enumerate(zip(params, grads)):
                if self.inner_optimizer == "sgd":
                    new.append(p - lr * g)
                    continue
                if steps == 1:
                    # a single step from a fresh Adam is lr·g/(|g| + ε) (bias corrections cancel)
                    new.append(p - lr * g / (g.abs() + adam_eps(1, eps_hat)))
                    continue
                if state[i] is None:
                    m1, v = (1 - b1) * g, (1 - b2) * g * g
                else:
                    m1 = b1 * state[i][0] + (1 - b1) * g
                    v = b2 * state[i][1] + (1 - b2) * g * g
                state[i] = (m1, v)
                # sqrt(v + tiny) keeps the double-backward finite where a gradient is exactly 0
                # (higher masks those entries); the tiny term is far below float precision of v.
                den = torch.sqrt(v + 1e-30) / math.sqrt(1 - b2**t) + adam_eps(t, eps_hat)
                new.append(p - (lr / (1 - b1**t)) * m1 / den)
            params = tuple(new)
        return params

    # ------------------------------------------------------------------ hand-derived one-step path
    # Blocks are stacked: S (B × 2n × D) holds each user's n chosen rows, then its n rejected
    # rows (zero rows for padding), with per-pair weights Sw (B × n, zero on padding).
    def _closed_form(self, steps: int) -> bool:
        return (not self._reference) and steps == 1 and self.inner_optimizer in ("adam", "sgd")

    def _support_grads(self, W1, b1, v, S, Sw):
        """Per-user gradients (B × …) of the weighted support loss at the shared (W1, b1, v),
        and the forward quantities the Hessian–vector product reuses."""
        import torch

        n = Sw.shape[1]
        Z = torch.matmul(S, W1.T) + b1  # B × 2n × h
        d = (Z > 0).to(Z.dtype) if self.activation == "relu" else torch.ones_like(Z)
        A = Z * d
        m = torch.matmul(A[:, :n] - A[:, n:], v)  # B × n margins
        sg = torch.sigmoid(-m)
        e = -Sw * sg  # ∂L/∂m
        s = torch.cat([e, -e], dim=1)  # ∂L/∂r of each row
        P = s[..., None] * v * d  # ∂L/∂z of each row
        GW = torch.bmm(P.transpose(1, 2), S)
        return (GW, P.sum(1), (s[..., None] * A).sum(1)), (d, A, s, Sw * sg * (1 - sg))

    def _step_params(self, p, G, eps_hat: bool):
        """One inner step of every user's copy (fresh Adam: lr·G/(|G| + ε); or SGD: lr·G) and
        the step's elementwise derivative w.r.t. G, negated (−lr·ε/(|G| + ε)², or −lr)."""
        lr = float(self.inner_lr)
        if self.inner_optimizer == "sgd":
            return p - lr * G, -lr
        eps = adam_eps(1, eps_hat)
        R = G.abs().add_(eps).reciprocal_()
        new = torch_addcmul(p, G, R, -lr)
        return new, R.square_().mul_(-lr * eps)

    def _meta_step(self, params, S, Sw, Q, Qw):
        """One meta-batch in closed form: the per-user query losses (B,) and a function that,
        given c = ∂obj/∂losses (B,), returns ∂obj/∂(W1, b1, v) — what autograd computes
        through :meth:`_inner` with ``create_graph=True``.

        Inner step θ' = θ − φ(G(θ)) with G the support gradient; ∂obj/∂θ = Ḡ' + H_S(θ)·u with
        Ḡ' = ∂obj/∂θ', u = −φ'(G) ⊙ Ḡ' and H_S the support loss's Hessian, applied by a
        forward-mode pass written out below (ReLU's mask is constant, as in autograd)."""
        import torch

        W1, b1, v = params
        eps_hat = self.train_inner_adam == "higher-0.2.1"
        (GW, Gb, Gv), (d, A, s, ed) = self._support_grads(W1, b1, v, S, Sw)
        W1a, fW = self._step_params(W1, GW, eps_hat)  # B × h × D
        b1a, fb = self._step_params(b1, Gb, eps_hat)  # B × h
        va, fv = self._step_params(v, Gv, eps_hat)
        n, nq = Sw.shape[1], Qw.shape[1]
        Zq = torch.baddbmm(b1a[:, None, :], Q, W1a.transpose(1, 2))  # B × 2nq × h
        dq = (Zq > 0).to(Zq.dtype) if self.activation == "relu" else torch.ones_like(Zq)
        Aq = Zq * dq
        mq = torch.bmm(Aq[:, :nq] - Aq[:, nq:], va[:, :, None])[..., 0]
        losses = (torch.nn.functional.softplus(-mq) * Qw).sum(1)

        def backward(c):
            eq = -(c[:, None] * Qw) * torch.sigmoid(-mq)
            sq = torch.cat([eq, -eq], dim=1)
            Pq = sq[..., None] * va[:, None, :] * dq
            Wbar = torch.bmm(Pq.transpose(1, 2), Q)  # ∂obj/∂W1' per user
            bbar, vbar = Pq.sum(1), (sq[..., None] * Aq).sum(1)
            gW = Wbar.sum(0)
            uW, ub, uv = Wbar.mul_(fW), bbar * fb, vbar * fv
            # tangent of the support gradient along u (forward mode, at θ)
            zd = torch.baddbmm(ub[:, None, :], S, uW.transpose(1, 2)) * d  # ż masked: ȧ
            md = torch.bmm(A[:, :n] - A[:, n:], uv[:, :, None])[..., 0] + torch.matmul(zd[:, :n] - zd[:, n:], v)
            sd = ed * md
            sd = torch.cat([sd, -sd], dim=1)  # ṡ
            T = (sd[..., None] * v + s[..., None] * uv[:, None, :]) * d
            gW.addmm_(T.flatten(0, 1).T, S.flatten(0, 1))
            gb = bbar.sum(0) + T.sum((0, 1))
            gv = vbar.sum(0) + (sd[..., None] * A + s[..., None] * zd).sum((0, 1))
            return gW, gb, gv

        return losses, backward

    @staticmethod
    def _gather(X, rows_c, rows_r, counts):
        """Stacked padded block (B × 2·n_max × D: chosen rows, then rejected) gathered in one
        indexing from X, whose last row is zero, and the 1/n pair weights (B × n_max)."""
        import torch

        B, n_max = len(counts), int(counts.max())
        zero = X.shape[0] - 1
        idx = np.full((B, 2, n_max), zero, dtype=np.int64)
        live = np.arange(n_max) < counts[:, None]
        idx[:, 0][live] = rows_c
        idx[:, 1][live] = rows_r
        S = X[torch.from_numpy(idx.reshape(-1))].view(B, 2 * n_max, X.shape[1])
        with np.errstate(divide="ignore"):
            w = np.where(live, 1.0 / np.maximum(counts, 1)[:, None], 0.0)
        return S, torch.from_numpy(w.astype(np.float32))

    @staticmethod
    def _pad(rows_c, rows_r, counts, X):
        """Padded (B × n_max × D) chosen/rejected blocks and 1/n weights from CSR rows."""
        import torch

        B, n_max = len(counts), int(counts.max())
        D = X.shape[1]
        Xc = torch.zeros(B, n_max, D)
        Xr = torch.zeros(B, n_max, D)
        wt = torch.zeros(B, n_max)
        off = 0
        for b, n in enumerate(counts):
            Xc[b, :n] = X[rows_c[off : off + n]]
            Xr[b, :n] = X[rows_r[off : off + n]]
            if n:
                wt[b, :n] = 1.0 / n
            off += n
        return Xc, Xr, wt

    # ------------------------------------------------------------------ fit
    def fit(self, train: UserPairs, ctx: Context) -> "MRMNoBasis":
        # small operations: extra intra-op threads only wait on each other on a shared CPU
        with torch_threads(1):
            return self._fit(train, ctx)

    def _fit(self, train: UserPairs, ctx: Context) -> "MRMNoBasis":
        import torch

        self._check_params()
        if ctx.features is None:
            raise BenchError(f"{self.name} needs response features", hint="use a dataset that provides features")
        self.ctx_ = ctx
        t0 = time.perf_counter()
        self.seen_without_pairs_ = int((train.counts()[np.flatnonzero(train.seen)] == 0).sum())
        lay = _Layout(train, ctx.features, self.query_fraction, with_diff=False) if len(train) else None
        if lay is None or lay.n_active == 0:
            raise BenchError(
                f"{self.name} has no training pairs: no seen user has a train pair within the budget",
                hint="raise --shots or use a dataset whose seen users have train pairs",
            )
        if self.meta_batch > lay.n_active:
            raise BenchError(
                f"{self.name}: meta_batch={self.meta_batch} is larger than the {lay.n_active} seen users "
                "with training pairs",
                hint=f"use --param {self.name}.meta_batch={min(2, lay.n_active)} (the paper uses 2)",
            )
        tr_c = train.chosen[lay.pair_index]
        tr_r = train.rejected[lay.pair_index]
        rows, inv = np.unique(np.r_[tr_c, tr_r], return_inverse=True)
        X = torch.from_numpy(ctx.features.take(rows)) * float(self.feature_scale)
        n = len(tr_c)
        loc_c, loc_r = inv[:n], inv[n:]
        D, h = ctx.features.dim, int(self.hidden)
        g = ctx.torch_generator(offset=11)
        bw, bv = 1.0 / math.sqrt(D), 1.0 / math.sqrt(h)  # nn.Linear's default init bounds
        W1 = torch.empty(h, D).uniform_(-bw, bw, generator=g).requires_grad_()
        b1 = torch.empty(h).uniform_(-bw, bw, generator=g).requires_grad_()
        v = torch.empty(h).uniform_(-bv, bv, generator=g).requires_grad_()
        params = (W1, b1, v)
        closed = self._closed_form(int(self.inner_steps))
        # the fused kernel: torch.optim.Adam's update in one pass (equal to the default loop up
        # to float32 rounding); the reference path keeps the default
        opt = torch.optim.Adam(params, lr=float(self.meta_lr), **({"fused": True} if closed else {}))
        total = lay.n_active * int(self.epochs) // int(self.meta_batch)
        warm = int(total * self.warmup)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lambda(s, warm, total))
        rng = np.random.default_rng([int(ctx.seed), 0x4D524D])
        if closed:  # a zero last row: the padding of :meth:`_gather`
            X = torch.cat([X, torch.zeros(1, X.shape[1], dtype=X.dtype)])
        self.epoch_losses_ = []
        for epoch in range(1, int(self.epochs) + 1):
            progress_step(epoch - 1, int(self.epochs), "epoch")
            plan = _Epoch(lay, rng, int(self.meta_batch), split=True)
            loss_sum = 0.0
            for j in range(plan.n_steps):
                p0, p1, prow, ns, _, _, _ = plan.step(j)
                B = p1 - p0
                n_s, n_q = plan.n_s[p0:p1], plan.n_q[p0:p1]
                if closed:
                    with torch.no_grad():
                        S, Sw = self._gather(X, loc_c[prow[:ns]], loc_r[prow[:ns]], n_s)
                        Q, Qw = self._gather(X, loc_c[prow[ns:]], loc_r[prow[ns:]], n_q)
                        losses, backward = self._meta_step(params, S, Sw, Q, Qw)
                        c = self._combine_weights(losses)
                        for p, gp in zip(params, backward(c)):
                            p.grad = gp
                else:
                    Sc, Sr, Sw = self._pad(loc_c[prow[:ns]], loc_r[prow[:ns]], n_s, X)
                    Qc, Qr, Qw = self._pad(loc_c[prow[ns:]], loc_r[prow[ns:]], n_q, X)
                    expanded = tuple(p.unsqueeze(0).expand(B, *p.shape) for p in params)
                    adapted = self._inner(expanded, Sc, Sr, Sw, int(self.inner_steps), create_graph=True,
                                          eps_hat=self.train_inner_adam == "higher-0.2.1")
                    losses = self._user_losses(adapted, Qc, Qr, Qw)
                    obj = self._combine_torch(losses)
                    opt.zero_grad()
                    obj.backward()
                if self.grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, float(self.grad_clip), foreach=True if closed else None)
                opt.step()
                sched.step()
                loss_sum += float(losses.detach().sum())
            self.epoch_losses_.append(loss_sum / lay.n_active)
            self.epochs_run_ = epoch
            self.params_ = tuple(p.detach() for p in params)
            if self.on_epoch is not None:
                self.on_epoch(epoch, self)
        self.params_ = tuple(p.detach().clone() for p in params)
        self.best_epoch_ = None
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _combine_weights(self, losses):
        """∂obj/∂losses of the RPO / sum objective (:func:`combine_losses`), as a torch vector."""
        import torch

        L = losses.detach().double().numpy()
        _, grad, _ = combine_losses(L, self.objective, float(self.rho), float(self.gamma))
        return torch.from_numpy(grad).to(losses.dtype)

    def _combine_torch(self, losses):
        """RPO / sum on a torch vector, through :func:`combine_losses`' gradient (exact)."""
        import torch

        L = losses.detach().double().numpy()
        obj, grad, _ = combine_losses(L, self.objective, float(self.rho), float(self.gamma))
        # a surrogate with the same value and the same gradient w.r.t. the losses
        c = torch.from_numpy(grad).to(losses.dtype)
        return (c * losses).sum() - float((grad * L).sum()) + obj

    # ------------------------------------------------------------------ adapt / score
    def adapt(self, support: UserPairs) -> "MRMNoBasis":
        self.support_ = support  # adaptation runs chunk by chunk inside score (memory)
        self.adapted_ = (support.counts() > 0) & (int(self.eval_inner_steps) > 0)
        return self

    def score(self, queries: Queries) -> np.ndarray:
        with torch_threads(1):
            return self._score(queries)

    def _score(self, queries: Queries) -> np.ndarray:
        import torch

        f = self.ctx_.features
        sup = self.support_
        s_off = sup.offsets()
        order = np.argsort(queries.user, kind="stable")
        q_user = queries.user[order]
        q_off = np.r_[0, np.cumsum(np.bincount(q_user, minlength=sup.n_users))]
        out = np.empty(len(queries), dtype=np.float64)
        W1, b1, v = self.params_
        scale = float(self.feature_scale)
        steps = int(self.eval_inner_steps)
        users = np.flatnonzero(np.diff(q_off) > 0)
        closed = self._closed_form(steps)
        for c0 in range(0, len(users), int(self.eval_chunk)):
            chunk = users[c0 : c0 + int(self.eval_chunk)]
            B = len(chunk)
            params = tuple(p.unsqueeze(0).expand(B, *p.shape) for p in (W1, b1, v))
            n_s = np.array([s_off[u + 1] - s_off[u] for u in chunk])
            if steps > 0 and n_s.max() > 0:
                sel = np.concatenate([np.arange(s_off[u], s_off[u + 1]) for u in chunk])
                rows, inv = np.unique(np.r_[sup.chosen[sel], sup.rejected[sel]], return_inverse=True)
                X = torch.from_numpy(f.take(rows)) * scale
                # users without support have all-zero weights: zero gradient, no move
                if closed:
                    X = torch.cat([X, torch.zeros(1, X.shape[1], dtype=X.dtype)])
                    with torch.no_grad():
                        S, Sw = self._gather(X, inv[: len(sel)], inv[len(sel) :], n_s)
                        G, _ = self._support_grads(W1, b1, v, S, Sw)
                        params = tuple(self._step_params(p, g, False)[0] for p, g in zip((W1, b1, v), G))
                else:
                    Sc, Sr, Sw = self._pad(inv[: len(sel)], inv[len(sel) :], n_s, X)
                    with torch.enable_grad():
                        params = tuple(p.clone().requires_grad_() for p in params)
                        params = tuple(p.detach() for p in self._inner(params, Sc, Sr, Sw, steps, create_graph=False))
            qsel = np.concatenate([order[q_off[u] : q_off[u + 1]] for u in chunk])
            n_q = np.array([q_off[u + 1] - q_off[u] for u in chunk])
            rows, inv = np.unique(np.r_[queries.a[qsel], queries.b[qsel]], return_inverse=True)
            X = torch.from_numpy(f.take(rows)) * scale
            Qa, Qb, Qw = self._pad(inv[: len(qsel)], inv[len(qsel) :], n_q, X)
            with torch.no_grad():
                m = (self._reward(params, Qa) - self._reward(params, Qb)).double().numpy()
            mask = Qw.numpy() > 0
            out[qsel] = m[mask]
        return out

    # ------------------------------------------------------------------ reporting
    def param_count(self) -> ParamCount:
        D, h = self.ctx_.features.dim, int(self.hidden)
        n = h * D + 2 * h
        return ParamCount(shared=n, per_user=n if int(self.eval_inner_steps) > 0 else 0)

    def trained_param_count(self) -> ParamCount:
        n = count_tensors(*self.params_)
        return ParamCount(shared=n, per_user=n if int(self.eval_inner_steps) > 0 else 0)

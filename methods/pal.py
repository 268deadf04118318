"""PAL: pluralistic alignment with K preference prototypes (Chen et al., ICLR 2025), on RM features.

Every user is a point on the simplex over K shared prototypes, ``softmax(W_u)``.

* **PAL-A** (``pal``, the ideal-point model; default): an item is ``f(x)``, a user's ideal point is
  ``f(softmax(W_u) · P)`` with prototypes ``P ∈ R^{K×D}`` living in the input space and the *same*
  projector ``f``; the closer item wins: margin = ‖f(x_r) − u‖ − ‖f(x_c) − u‖.
* **PAL-B** (``pal-b``, prompt-conditioned): K prompt projectors ``g_k``; the user's preference
  direction for a prompt p is ``Σ_k softmax(W_u)_k g_k(p)``; an item scores
  ``cos(f(x), that direction) × exp(s)`` (s learnable, clamped at log 100).

The language model of the official code is replaced by the fixed reward-model features (the
official "fix_llm" mode). Seen users' weights, the projectors and the prototypes are trained
jointly by minibatch Adam with the official per-group learning rates; an unseen user gets new
weights fitted on its support pairs with everything else frozen. See ``pal.md``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs
from bench.errors import BenchError
from bench.hashing import id_hashes, mix64, tag
from bench.methods._common import unique_rows
from bench.progress import step as progress_step

ZERO_SHOT = ("mean", "uniform")
INPUT_SCALES = ("rms", "none")
SCALE_INIT = math.log(1 / 0.07)  # CLIP's logit scale, as in the official code
SCALE_MAX = 100.0


def mlp_param_count(d_in: int, width: int) -> int:
    """``mlp2-gelu``: Linear(d_in, w) → GELU → Linear(w, w) → GELU → Linear(w, w), with biases."""
    return d_in * width + width + 2 * (width * width + width)


def _make_mlp(d_in: int, width: int):
    import torch.nn as nn

    return nn.Sequential(
        nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, width), nn.GELU(), nn.Linear(width, width)
    )


class RowAdam:
    """Adam on the rows of a (users × K) tensor where only the rows in the batch take a step.

    The official code keeps one parameter per user (a ``ParameterDict``); ``torch.optim.Adam``
    skips a parameter whose gradient is None, so a user's moments and step count advance only
    when the user is in the batch. This reproduces that for all users in one tensor.
    """

    def __init__(self, param, lr: float, betas=(0.9, 0.999), eps: float = 1e-8):
        import torch

        self.p = param
        self.lr, (self.b1, self.b2), self.eps = lr, betas, eps
        self.m = torch.zeros_like(param)
        self.v = torch.zeros_like(param)
        self.t = torch.zeros(param.shape[0], dtype=torch.float64)

    def step(self, rows, grad) -> None:
        import torch

        with torch.no_grad():
            self.t[rows] += 1
            t = self.t[rows].to(self.p.dtype)[:, None]
            m = self.m[rows] * self.b1 + (1 - self.b1) * grad
            v = self.v[rows] * self.b2 + (1 - self.b2) * grad * grad
            self.m[rows], self.v[rows] = m, v
            denom = (v / (1 - self.b2**t)).sqrt() + self.eps
            self.p[rows] -= self.lr * (m / (1 - self.b1**t)) / denom


def _one_thread():
    """torch single-threaded inside the block (minibatch steps of a few rows gain nothing from
    more threads, and on a shared CPU extra threads mostly wait); restores the setting after."""
    from bench.threads import torch_threads

    return torch_threads(1)


class _PALBase(Method):
    """Shared machinery of PAL-A and PAL-B (training loop, adaptation, scoring)."""

    version: ClassVar[str] = "1"
    kind: ClassVar[str] = "personalized parameter"
    variant: ClassVar[str] = "a"

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        who = self.name
        for k in ("n_prototypes", "width", "batch_size"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 1:
                raise BenchError(f"{who}: {k} must be an integer ≥ 1, got {v!r}")
        for k in ("epochs", "adapt_epochs"):
            v = getattr(self, k)
            if not isinstance(v, int) or v < 0:
                raise BenchError(f"{who}: {k} must be an integer ≥ 0, got {v!r}")
        for k in ("lr_projector", "lr_weights", "lr_scale", "adapt_lr") + (("lr_prototypes",) if self.variant == "a" else ()):
            if not getattr(self, k) > 0:
                raise BenchError(f"{who}: {k} must be > 0, got {getattr(self, k)!r}")
        if self.weight_decay_projector < 0:
            raise BenchError(f"{who}: weight_decay_projector must be ≥ 0")
        if self.loss not in self._losses():
            raise BenchError(f"{who}: loss must be one of {self._losses()}, got {self.loss!r}")
        if self.zero_shot not in ZERO_SHOT:
            raise BenchError(
                f"{who}: zero_shot must be one of {ZERO_SHOT}, got {self.zero_shot!r}",
                hint="'mean' gives a user without support the seen users' mean weights; 'uniform' gives 1/K each",
            )
        if self.input_scale not in INPUT_SCALES:
            raise BenchError(f"{who}: input_scale must be one of {INPUT_SCALES}, got {self.input_scale!r}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise BenchError(f"{who}: val_fraction must be in [0, 1), got {self.val_fraction!r}", hint="0 turns selection off")

    @classmethod
    def _losses(cls) -> tuple[str, ...]:
        return ("hinge", "logistic") if cls.variant == "a" else ("logistic",)

    @property
    def _uses_scale(self) -> bool:
        return self.loss == "logistic"

    # ------------------------------------------------------------------ model pieces
    def _build(self, ctx: Context, n_seen: int):
        import torch

        K, w, D = self.n_prototypes, self.width, ctx.features.dim
        # torch's default Linear init draws from the global generator: fork it so the run is
        # seeded by the split seed and leaves the caller's generator untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(ctx.seed) * 1_000_003 + tag("pal") % 1_000_003)
            f = _make_mlp(D, w)
            gks = [_make_mlp(D, w) for _ in range(K)] if self.variant == "b" else []
        g = ctx.torch_generator(2)
        P = None
        if self.variant == "a":
            # official TensorInitializer('gaussian', is_expectation_norm_init=False): unit-norm rows
            P = torch.randn(K, D, generator=g)
            P = P / P.norm(dim=1, keepdim=True)
            P.requires_grad_(True)
        W = torch.randn(n_seen, K, generator=g).requires_grad_(True)
        scale = torch.tensor(SCALE_INIT, requires_grad=self._uses_scale)
        return f, gks, P, W, scale

    def _scale_value(self):
        import torch

        return torch.clamp(self.scale_.exp(), max=SCALE_MAX)

    def _tail(self, h, mlp=None):
        """A projector (default f) after its first linear layer."""
        f = self.f_ if mlp is None else mlp
        return f[4](f[3](f[2](f[1](h))))

    def _first(self, lin, a, p_rows: slice | None = None):
        """``lin(a)`` for a D-wide first layer; while training, with a hand-written backward.

        Autograd would allocate a fresh D × w weight gradient per use and step (and, for the
        prototypes' rows, a gradient for every input row); here the output is a leaf whose
        gradient ``_first_backward`` turns into the layer's (and P's) gradients, written into
        buffers kept across steps. Same numbers as autograd up to float rounding (tested).
        """
        import torch

        if not (torch.is_grad_enabled() and lin.weight.requires_grad):
            return lin(a)
        h = torch.addmm(lin.bias.detach(), a, lin.weight.detach().t()).requires_grad_(True)
        self._pending.append((lin, a, h, p_rows))
        return h

    def _first_backward(self) -> None:
        import torch

        bufs = self.__dict__.setdefault("_grad_bufs", {})
        seen = set()
        for lin, a, h, p_rows in self._pending:
            key = id(lin)
            if key not in bufs:
                bufs[key] = (torch.zeros_like(lin.weight), torch.zeros_like(lin.bias))
            gw, gb = bufs[key]
            if key in seen:
                gw.addmm_(h.grad.t(), a)
                gb += h.grad.sum(0)
            else:
                torch.mm(h.grad.t(), a, out=gw)
                torch.sum(h.grad, 0, out=gb)
                seen.add(key)
            lin.weight.grad, lin.bias.grad = gw, gb
            if p_rows is not None:
                gp = bufs.setdefault("P", torch.zeros_like(self.P_))
                torch.mm(h.grad[p_rows], lin.weight.detach(), out=gp)
                self.P_.grad = gp
        self._pending.clear()

    def _user_points(self, s, h_p):
        """PAL-A ideal points f(s · P) for simplex weights s (n × K), given h_p = L1(P) (K × w).

        The first layer is affine and the weights sum to 1, so L1(s · P) = s · L1(P): the D-wide
        product is done once on the K prototypes instead of once per user.
        """
        return self._tail(s @ h_p)

    def _pair_margin(self, fx_c, fx_r, s, side):
        """Margins of pairs for users with simplex weights s (rows aligned).

        PAL-A: fx_* are item embeddings f(x) and ``side`` is L1(P); PAL-B: fx_* are unit-normalised
        f(x) and ``side`` holds the prompt maps g_k(p) of each pair's prompt (n × K × w).
        """
        import torch

        if self.variant == "a":
            u = self._user_points(s, side)
            m = torch.linalg.norm(fx_r - u, dim=-1) - torch.linalg.norm(fx_c - u, dim=-1)
        else:
            u = torch.einsum("nk,nkw->nw", s, side)
            u = u / u.norm(dim=-1, keepdim=True)
            m = ((fx_c - fx_r) * u).sum(-1)
        if self._uses_scale:
            m = m * self._scale_value()
        return m

    def _prototype_side(self):
        """What ``_pair_margin`` needs besides items and weights, for PAL-A: L1(P)."""
        return self.f_[0](self.P_)

    def _pair_loss(self, margin):
        import torch.nn.functional as F

        if self.loss == "hinge":  # official 'dist' learner + hinge loss (margin 1)
            return F.relu(1.0 - margin)
        return F.softplus(-margin)  # cross-entropy over the two options = BT on the margin

    def _embed_items(self, x):
        fx = self.f_(x)
        if self.variant == "b":
            fx = fx / fx.norm(dim=-1, keepdim=True)
        return fx

    def _embed_prompts(self, q):
        import torch

        return torch.stack([g(q) for g in self.gks_], dim=1)  # (n, K, w)

    # ------------------------------------------------------------------ data
    def _scale_factor(self, feats, rows: np.ndarray) -> float:
        """1 / RMS entry of the given feature rows (seen users' train responses only)."""
        if self.input_scale == "none" or len(rows) == 0:
            return 1.0
        ss, n = 0.0, 0
        for _, block in feats.iter_chunks(np.sort(rows)):
            ss += float(np.square(block, dtype=np.float64).sum())
            n += block.size
        rms = math.sqrt(ss / max(n, 1))
        return 1.0 / rms if rms > 0 else 1.0

    def _rows_tensor(self, feats, rows: np.ndarray, factor: float):
        import torch

        x = feats.take(rows)
        if factor != 1.0:
            x *= np.float32(factor)
        return torch.from_numpy(x)

    def _prompt_rows(self, chosen: np.ndarray) -> np.ndarray:
        return np.asarray(self.ctx_.prompt_of, dtype=np.int64)[chosen]

    # ------------------------------------------------------------------ fit
    def fit(self, train: UserPairs, ctx: Context) -> "_PALBase":
        import torch

        self._check_params()
        if ctx.features is None:
            raise BenchError(f"{self.name} needs features", hint="run it on a dataset with the 'features' capability")
        if self.variant == "b" and (ctx.prompt_features is None or ctx.prompt_of is None):
            raise BenchError(
                "pal-b needs prompt features (one feature row per prompt)",
                hint="use a dataset with the 'prompt_features' capability (e.g. synthetic-reddit:prompt_features=true)",
            )
        if len(train) == 0:
            raise BenchError(
                f"{self.name} has no training pairs (no seen user has a train pair within the budget)",
                hint="raise --shots or check the dataset's train halves",
            )
        self.ctx_ = ctx
        seen_idx = np.flatnonzero(train.seen)
        local = np.full(train.n_users, -1, dtype=np.int64)
        local[seen_idx] = np.arange(len(seen_idx))
        if (local[train.user] < 0).any():
            raise BenchError(f"{self.name}.fit received pairs of unseen users", hint="fit sees seen users' train pairs only")
        n_seen = len(seen_idx)
        if self.variant == "b":
            po = np.asarray(ctx.prompt_of, dtype=np.int64)
            bad = np.flatnonzero(po[train.chosen] != po[train.rejected])
            if len(bad):
                raise BenchError(
                    f"pal-b: {len(bad)} train pairs compare responses to different prompts (e.g. pair {train.pair_id[bad[0]]})",
                    hint="PAL-B conditions on the prompt both responses answer; fix the dataset's prompt_id column",
                )

        rows = np.unique(np.r_[train.chosen, train.rejected])
        self.x_factor_ = self._scale_factor(ctx.features, rows)
        self.q_factor_ = 1.0
        if self.variant == "b":
            self.q_factor_ = self._scale_factor(ctx.prompt_features, np.unique(self._prompt_rows(train.chosen)))

        f, gks, P, W, scale = self._build(ctx, n_seen)
        self.f_, self.gks_, self.P_, self.W_, self.scale_ = f, gks, P, W, scale

        fit_part, val_part = train, None
        if self.val_fraction > 0:
            fit_part, val_part = train.carve_validation(self.val_fraction)
            if len(val_part) == 0:
                val_part = None

        data = self._pair_tensors(fit_part, local)
        val = self._pair_tensors(val_part, local) if val_part is not None else None

        proj_params = list(f.parameters()) + [p for g in gks for p in g.parameters()]
        groups = [{"params": proj_params, "lr": self.lr_projector, "weight_decay": self.weight_decay_projector}]
        if P is not None:
            groups.append({"params": [P], "lr": self.lr_prototypes, "weight_decay": 0.0})
        if self._uses_scale:
            groups.append({"params": [scale], "lr": self.lr_scale, "weight_decay": 0.0})
        # The official seen-user optimiser is torch.optim.Adam with these groups (weight decay is
        # Adam's coupled L2); the user weights step only when their user is in the batch.
        opt = torch.optim.Adam(groups, fused=True)  # one pass over the 2.6M projector weights per step
        w_opt = RowAdam(W, lr=self.lr_weights)
        rng = np.random.default_rng([int(ctx.seed), tag("pal-batches") % (2**32)])

        n = len(data["user"])
        history = []
        best = [math.inf, None]
        with _one_thread():
            self._train_epochs(data, val, opt, w_opt, rng, history, best)
        self.best_epoch_ = None
        if val is not None and best[1] is not None:
            self._restore(best[1])
            self.best_epoch_ = min(history, key=lambda r: r["val_loss"])["epoch"]
        self.history_ = history
        return self._finish_fit(train, local, seen_idx, n_seen)

    def _train_epochs(self, data, val, opt, w_opt, rng, history, best) -> None:
        import torch

        f, W = self.f_, self.W_
        n = len(data["user"])
        self._pending = []
        for epoch in range(self.epochs):
            progress_step(epoch, self.epochs, "epoch")
            perm = rng.permutation(n)
            f.train()
            total = 0.0
            for start in range(0, n, self.batch_size):
                b = perm[start : start + self.batch_size]
                opt.zero_grad(set_to_none=True)
                W.grad = None
                loss = self._batch_loss(data, b).mean()
                loss.backward()
                self._first_backward()
                users = torch.from_numpy(np.unique(data["user"][b]))
                w_opt.step(users, W.grad[users])
                opt.step()
                total += float(loss.detach()) * len(b)
            rec = {"epoch": epoch + 1, "train_loss": total / max(n, 1)}
            if val is not None:
                rec["val_loss"] = self._eval_loss(val)
                if rec["val_loss"] < best[0]:
                    best[:] = [rec["val_loss"], self._snapshot()]
            history.append(rec)

    def _finish_fit(self, train: UserPairs, local: np.ndarray, seen_idx: np.ndarray, n_seen: int) -> "_PALBase":
        import torch

        self._pending = []
        self.__dict__.pop("_grad_bufs", None)
        for t in self._shared_tensors() + [self.W_]:
            t.grad = None

        for p in self._shared_tensors():
            p.requires_grad_(False)
        self.W_.requires_grad_(False)
        self.seen_index_ = seen_idx
        self.seen_has_pairs_ = np.bincount(local[train.user], minlength=n_seen) > 0
        s_seen = torch.softmax(self.W_, dim=1).numpy()
        self.prior_ = self._prior(s_seen[self.seen_has_pairs_])
        self.weights_ = self._seen_weights(train.n_users)
        return self

    def _pair_tensors(self, part: UserPairs, local: np.ndarray) -> dict[str, Any]:
        import torch

        rows, inv = np.unique(np.r_[part.chosen, part.rejected], return_inverse=True)
        n = len(part)
        d = {
            "x": self._rows_tensor(self.ctx_.features, rows, self.x_factor_),
            "ic": torch.from_numpy(inv[:n].astype(np.int64)),
            "ir": torch.from_numpy(inv[n:].astype(np.int64)),
            "user": local[part.user],
        }
        if self.variant == "b":
            prows, pinv = np.unique(self._prompt_rows(part.chosen), return_inverse=True)
            d["q"] = self._rows_tensor(self.ctx_.prompt_features, prows, self.q_factor_)
            d["iq"] = torch.from_numpy(pinv.astype(np.int64))
        return d

    def _batch_loss(self, data: dict[str, Any], b: np.ndarray):
        import torch

        bt = torch.from_numpy(b)
        nb = len(b)
        x = torch.cat([data["x"][data["ic"][bt]], data["x"][data["ir"][bt]]])
        if self.variant == "a":
            # items and prototypes through the first layer together: one product, one weight gradient
            h = self._first(self.f_[0], torch.cat([x, self.P_.detach()]), p_rows=slice(2 * nb, None))
            fx, side = self._tail(h[: 2 * nb]), h[2 * nb :]
        else:
            fx = self._tail(self._first(self.f_[0], x))
            fx = fx / fx.norm(dim=-1, keepdim=True)
            q = data["q"][data["iq"][bt]]
            side = torch.stack([self._tail(self._first(g[0], q), g) for g in self.gks_], dim=1)
        s = torch.softmax(self.W_[torch.from_numpy(data["user"][b])], dim=1)
        return self._pair_loss(self._pair_margin(fx[:nb], fx[nb:], s, side))

    def _eval_loss(self, data: dict[str, Any]) -> float:
        import torch

        self.f_.eval()
        with torch.no_grad():
            n = len(data["user"])
            tot = sum(float(self._batch_loss(data, np.arange(i, min(n, i + 1024))).sum()) for i in range(0, n, 1024))
        return tot / max(n, 1)

    def _shared_tensors(self) -> list:
        ts = list(self.f_.parameters()) + [p for g in self.gks_ for p in g.parameters()]
        if self.P_ is not None:
            ts.append(self.P_)
        ts.append(self.scale_)
        return ts

    def _snapshot(self):
        return [t.detach().clone() for t in self._shared_tensors()] + [self.W_.detach().clone()]

    def _restore(self, snap) -> None:
        import torch

        with torch.no_grad():
            for t, v in zip(self._shared_tensors() + [self.W_], snap):
                t.copy_(v)

    def _prior(self, s_seen: np.ndarray) -> np.ndarray:
        K = self.n_prototypes
        if self.zero_shot == "uniform" or len(s_seen) == 0:
            return np.full(K, 1.0 / K, dtype=np.float32)
        return s_seen.mean(axis=0).astype(np.float32)

    def _seen_weights(self, n_users: int) -> np.ndarray:
        import torch

        out = np.tile(self.prior_, (n_users, 1))
        s = torch.softmax(self.W_, dim=1).numpy()
        out[self.seen_index_[self.seen_has_pairs_]] = s[self.seen_has_pairs_]
        return out

    # ------------------------------------------------------------------ adapt
    def adapt(self, support: UserPairs) -> "_PALBase":
        import torch

        weights = self._seen_weights(support.n_users)
        sup = support.subset(~support.seen[support.user])
        counts = sup.counts()
        users = np.flatnonzero(counts > 0)
        if len(users):
            w0_all = torch.randn(support.n_users, self.n_prototypes, generator=self.ctx_.torch_generator(3))
            local = np.full(support.n_users, -1, dtype=np.int64)
            local[users] = np.arange(len(users))
            w = self._fit_new_users(sup, local, w0_all[torch.from_numpy(users)].clone())
            weights[users] = torch.softmax(w, dim=1).numpy()
        self.weights_ = weights
        return self

    def _fit_new_users(self, sup: UserPairs, local: np.ndarray, w0):
        """Fit the weights of all users with support at once; everything else is frozen.

        Each user runs the official schedule on its own pairs — ``adapt_epochs`` epochs of
        shuffled minibatches of ``batch_size`` pairs, a step of Adam on its weights per minibatch
        — and since users share no trainable parameter, all users take their t-th step together.
        """
        import torch

        self.f_.eval()
        with torch.no_grad():
            data = self._pair_tensors(sup, local)
            fx = self._embed_items(data["x"])  # frozen projector: embed every support row once
            fx_c, fx_r = fx[data["ic"]], fx[data["ir"]]
            side = self._embed_prompts(data["q"])[data["iq"]] if self.variant == "b" else self._prototype_side()
        with _one_thread():
            pair_key = id_hashes(sup.pair_id)
            return self._adapt_steps(data["user"], fx_c, fx_r, side, w0, pair_key)

    def _adapt_steps(self, u, fx_c, fx_r, side, w0, pair_key):
        import torch

        n = len(u)
        w = w0.requires_grad_(True)
        opt = RowAdam(w, lr=self.adapt_lr)  # official: AdamW(lr 5e-3, weight_decay 0) = Adam
        counts = np.bincount(u, minlength=len(w))
        starts = np.r_[0, np.cumsum(counts)[:-1]]
        for epoch in range(self.adapt_epochs):
            progress_step(epoch, self.adapt_epochs, "adapt epoch")
            # Per user, a random order of its own pairs cut into minibatches. The order is keyed
            # by (seed, epoch, pair id), so a user's schedule does not depend on other users.
            key = mix64(np.uint64(self.ctx_.seed), np.uint64(tag("pal-adapt")), np.uint64(epoch), pair_key)
            order = np.lexsort((key, u))
            pos = np.empty(n, dtype=np.int64)
            pos[order] = np.arange(n) - starts[u[order]]
            batch_of = pos // self.batch_size
            for t in range(int(batch_of.max()) + 1):
                sel = np.flatnonzero(batch_of == t)
                us = u[sel]
                s = torch.softmax(w[torch.from_numpy(us)], dim=1)
                st = torch.from_numpy(sel)
                m = self._pair_margin(fx_c[st], fx_r[st], s, side[st] if self.variant == "b" else side)
                per_pair = self._pair_loss(m)
                size = np.bincount(us, minlength=len(w))
                loss = (per_pair / torch.from_numpy(size[us].astype(np.float32))).sum()  # Σ_users batch mean
                w.grad = None
                loss.backward()
                rows = torch.from_numpy(np.unique(us))
                opt.step(rows, w.grad[rows])
        return w.detach()

    # ------------------------------------------------------------------ score
    def score(self, queries: Queries) -> np.ndarray:
        import torch

        rows, ia, ib = unique_rows(queries)
        self.f_.eval()
        fx = torch.empty(len(rows), self.width)
        with torch.no_grad():
            for sl, block in self.ctx_.features.iter_chunks(rows):
                x = torch.from_numpy(block)
                if self.x_factor_ != 1.0:
                    x = x * self.x_factor_
                fx[sl] = self._embed_items(x)
            s = torch.from_numpy(self.weights_[queries.user])
            out = np.empty(len(queries), dtype=np.float64)
            gk_all = pinv = None
            h_p = self._prototype_side() if self.variant == "a" else None
            if self.variant == "b":
                prows, pinv = np.unique(self._prompt_rows(queries.a), return_inverse=True)
                gk_all = torch.empty(len(prows), self.n_prototypes, self.width)
                for sl, block in self.ctx_.prompt_features.iter_chunks(prows):
                    q = torch.from_numpy(block)
                    if self.q_factor_ != 1.0:
                        q = q * self.q_factor_
                    gk_all[sl] = self._embed_prompts(q)
            step = 65536
            for i in range(0, len(queries), step):
                sl = slice(i, i + step)
                side = h_p if gk_all is None else gk_all[torch.from_numpy(pinv[sl])]
                m = self._pair_margin(fx[torch.from_numpy(ia[sl])], fx[torch.from_numpy(ib[sl])], s[sl], side)
                out[sl] = m.double().numpy()
        return out

    # ------------------------------------------------------------------ parameters
    def _shared_formula(self) -> int:
        D, K, w = self.ctx_.features.dim, self.n_prototypes, self.width
        n = mlp_param_count(D, w)
        if self.variant == "a":
            n += K * D  # prototypes live in the input space (official user learner 'f(Pw)')
        else:
            n += K * mlp_param_count(self.ctx_.prompt_features.dim, w)
        return n + (1 if self._uses_scale else 0)

    def param_count(self) -> ParamCount:
        return ParamCount(shared=self._shared_formula(), per_user=self.n_prototypes)

    def trained_param_count(self) -> ParamCount:
        trained = list(self.f_.parameters()) + [p for g in self.gks_ for p in g.parameters()]
        if self.P_ is not None:
            trained.append(self.P_)
        if self._uses_scale:
            trained.append(self.scale_)
        per_user = int(self.W_.numel() // max(self.W_.shape[0], 1))
        return ParamCount(shared=int(sum(t.numel() for t in trained)), per_user=per_user)

    def extra_meta(self) -> dict:
        return {
            "history": getattr(self, "history_", None),
            "best_epoch": getattr(self, "best_epoch_", None),
            "logit_scale": float(self._scale_value()) if self._uses_scale else None,
            "input_factor": getattr(self, "x_factor_", None),
            "seen_users_fitted": int(self.seen_has_pairs_.sum()),
        }


class PAL(_PALBase):
    name: ClassVar[str] = "pal"
    variant: ClassVar[str] = "a"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    summary: ClassVar[str] = "PAL-A: users as mixtures of K prototype ideal points, shared mlp2-gelu projector (RM features)"
    test_params: ClassVar[dict] = {"width": 16, "epochs": 2, "adapt_epochs": 2}

    def __init__(
        self,
        n_prototypes: int = 2,
        width: int = 512,
        epochs: int = 20,
        batch_size: int = 4,
        loss: str = "hinge",
        lr_projector: float = 1e-4,
        weight_decay_projector: float = 0.01,
        lr_prototypes: float = 5e-3,
        lr_weights: float = 5e-3,
        lr_scale: float = 0.1,
        adapt_epochs: int = 20,
        adapt_lr: float = 5e-3,
        input_scale: str = "rms",
        val_fraction: float = 0.0,
        zero_shot: str = "mean",
    ):
        self.n_prototypes = n_prototypes
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.loss = loss
        self.lr_projector = lr_projector
        self.weight_decay_projector = weight_decay_projector
        self.lr_prototypes = lr_prototypes
        self.lr_weights = lr_weights
        self.lr_scale = lr_scale
        self.adapt_epochs = adapt_epochs
        self.adapt_lr = adapt_lr
        self.input_scale = input_scale
        self.val_fraction = val_fraction
        self.zero_shot = zero_shot


class PALB(_PALBase):
    name: ClassVar[str] = "pal-b"
    variant: ClassVar[str] = "b"
    requires: ClassVar[frozenset[str]] = frozenset({"features", "prompt_features"})
    summary: ClassVar[str] = "PAL-B: prompt-conditioned mixture of K prompt projectors, cosine × learnable scale (RM features)"
    test_params: ClassVar[dict] = {"width": 16, "epochs": 2, "adapt_epochs": 2}

    def __init__(
        self,
        n_prototypes: int = 2,
        width: int = 512,
        epochs: int = 20,
        batch_size: int = 4,
        loss: str = "logistic",
        lr_projector: float = 1e-4,
        weight_decay_projector: float = 0.01,
        lr_weights: float = 5e-3,
        lr_scale: float = 0.1,
        adapt_epochs: int = 20,
        adapt_lr: float = 5e-3,
        input_scale: str = "rms",
        val_fraction: float = 0.0,
        zero_shot: str = "mean",
    ):
        self.n_prototypes = n_prototypes
        self.width = width
        self.epochs = epochs
        self.batch_size = batch_size
        self.loss = loss
        self.lr_projector = lr_projector
        self.weight_decay_projector = weight_decay_projector
        self.lr_weights = lr_weights
        self.lr_scale = lr_scale
        self.adapt_epochs = adapt_epochs
        self.adapt_lr = adapt_lr
        self.input_scale = input_scale
        self.val_fraction = val_fraction
        self.zero_shot = zero_shot

"""GPO: group preference optimisation (Zhao et al., ICLR 2024) for per-user pairwise preferences.

A transformer neural process reads a user's labelled pairs as context points and predicts the
preference of new options in context. Here a "group" is one user and a "question" is one pair with
two options: a context pair contributes the points (x_chosen, 1) and (x_rejected, 0), a target
pair the points (x_a, 0-slot) and (x_b, 0-slot); the two predicted means of a target question are
softmax-normalised and fitted to (1, 0) by a Gaussian likelihood, and a pair is scored by the
difference of the options' raw means (the logit of the softmax probability of option a). New
users are served in context only: their support pairs are the context, with no gradient steps.

See ``gpo.md`` for the official settings and every adaptation.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs
from bench.errors import BenchError
from bench.methods._incontext import (
    check_positive,
    check_range,
    cosine_lr,
    group_codes,
    load_rows,
    make_adam,
    rng_for,
    support_context,
    torch_seed_everything,
    train_row_cache,
)
from bench.progress import step as progress_step


def _padded(starts: np.ndarray, lengths: np.ndarray, width: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(R, W) indices ``starts[r] + j`` and mask ``j < lengths[r]`` (index 0 where masked)."""
    w = max(1, int(lengths.max(initial=0)) if width is None else width)
    j = np.arange(w)[None, :]
    mask = j < lengths[:, None]
    return np.where(mask, starts[:, None] + j, 0), mask


class GPO(Method):
    name: ClassVar[str] = "gpo"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    summary: ClassVar[str] = "group preference optimisation: a transformer neural process predicting preferences in context"
    kind: ClassVar[str] = "personalized input"
    test_params: ClassVar[dict] = {"d_model": 32, "dim_feedforward": 32, "num_layers": 2, "steps": 30}

    def __init__(
        self,
        d_model: int = 128,
        emb_depth: int = 4,
        dim_feedforward: int = 128,
        nhead: int = 4,
        num_layers: int = 6,
        bound_std: bool = False,
        lr: float = 3e-4,
        steps: int = 500,
        batch_users: int = 32,
        ctx_min: int = 0,
        ctx_max: int = 100,
        tar_min: int = 10,
        tar_max: int = 100,
        context_cap: int = 100,
        select: str = "validation",
        val_fraction: float = 0.1,
        eval_every: int = 50,
        standardize: bool = True,
        bf16: bool = False,
    ):
        self.d_model = d_model
        self.emb_depth = emb_depth
        self.dim_feedforward = dim_feedforward
        self.nhead = nhead
        self.num_layers = num_layers
        self.bound_std = bound_std
        self.lr = lr
        self.steps = steps
        self.batch_users = batch_users
        self.ctx_min = ctx_min
        self.ctx_max = ctx_max
        self.tar_min = tar_min
        self.tar_max = tar_max
        self.context_cap = context_cap
        self.select = select
        self.val_fraction = val_fraction
        self.eval_every = eval_every
        self.standardize = standardize
        self.bf16 = bf16

    @classmethod
    def source_files(cls) -> list[Path]:
        here = Path(__file__).parent
        return [Path(__file__), here / "_gpo_net.py", here / "_incontext.py"]

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        for k in ("d_model", "dim_feedforward", "nhead", "num_layers", "batch_users", "ctx_max", "tar_min", "tar_max", "context_cap"):
            check_positive(k, getattr(self, k))
        check_positive("steps", self.steps, allow_zero=True)
        check_positive("eval_every", self.eval_every)
        if self.select not in ("validation", "last"):
            raise BenchError(f"parameter select must be 'validation' or 'last', got {self.select!r}", hint="pass --param gpo.select=validation")
        if not isinstance(self.val_fraction, float) or not 0.0 < self.val_fraction < 1.0:
            raise BenchError(f"parameter val_fraction must be in (0, 1), got {self.val_fraction!r}", hint="pass --param gpo.val_fraction=0.1")
        check_positive("ctx_min", self.ctx_min, allow_zero=True)
        check_range("ctx_min..ctx_max", self.ctx_min, self.ctx_max)
        check_range("tar_min..tar_max", self.tar_min, self.tar_max)
        check_positive("lr", self.lr, integer=False)
        if not isinstance(self.emb_depth, int) or self.emb_depth < 2:
            raise BenchError(f"parameter emb_depth must be an integer ≥ 2, got {self.emb_depth!r}", hint="pass --param gpo.emb_depth=4")
        if self.d_model % self.nhead:
            raise BenchError(
                f"d_model ({self.d_model}) must be divisible by nhead ({self.nhead})",
                hint="choose nhead among the divisors of d_model (official: d_model 128, nhead 4)",
            )

    # ------------------------------------------------------------------ fit
    def fit(self, train: UserPairs, ctx: Context) -> "GPO":
        import torch

        from bench.methods._gpo_net import GPONet

        self._check_params()
        self.mean_, self.inv_std_, cache = train_row_cache("GPO", train, ctx, self.standardize, self.bf16)
        self.ctx_ = ctx
        dev = ctx.device
        feats = ctx.features
        fit_pairs, val_pairs = train, None
        if self.select == "validation":
            fit_pairs, val_pairs = train.carve_validation(self.val_fraction)
            if len(val_pairs) == 0 or len(fit_pairs) == 0:
                fit_pairs, val_pairs = train, None
        lc = cache.local(fit_pairs.chosen)
        lr_ = cache.local(fit_pairs.rejected)

        with torch_seed_everything(ctx.seed, "gpo-init"):
            net = GPONet(
                feats.dim, self.d_model, self.emb_depth, self.dim_feedforward, self.nhead, self.num_layers, self.bound_std, bool(self.bf16)
            ).to(dev)
        opt = make_adam(net.parameters(), self.lr, dev)

        off = fit_pairs.offsets()
        grp = group_codes(fit_pairs)
        users = np.flatnonzero(fit_pairs.counts() > 0)
        rng = rng_for(ctx.seed, "gpo-train")
        queue = np.empty(0, dtype=np.int64)
        losses = []
        self.val_history_ = []
        best = (np.inf, 0, None)
        net.train()
        for step in range(self.steps):
            progress_step(step, self.steps, "step")
            if len(queue) == 0:
                queue = rng.permutation(users)  # one epoch over the seen users
            batch, queue = queue[: self.batch_users], queue[self.batch_users :]
            cp, cm, tp, tm = self._draw_questions(batch, off, grp, rng)
            for g in opt.param_groups:
                g["lr"] = self.lr * cosine_lr(step, self.steps)
            loss = self._loss(net, cache, lc, lr_, cp, cm, tp, tm, rng)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            done = step + 1
            if val_pairs is not None and (done % self.eval_every == 0 or done == self.steps):
                v = self._validation_loss(net, cache, fit_pairs, val_pairs)
                self.val_history_.append((done, v))
                if v < best[0]:
                    best = (v, done, {k: t.detach().clone() for k, t in net.state_dict().items()})
        if best[2] is not None:
            net.load_state_dict(best[2])
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net_ = net
        self.steps_ = self.steps
        self.selected_step_ = best[1] if best[2] is not None else self.steps
        tail = max(1, min(len(losses), -(-len(users) // self.batch_users)))
        self.train_loss_ = float(np.mean(losses[-tail:])) if losses else float("nan")
        return self

    def _validation_loss(self, net, cache, fit_pairs: UserPairs, val_pairs: UserPairs) -> float:
        """The training objective on held-out train pairs of seen users, in context of their
        other (fit) pairs: mean Gaussian NLL per pair of the softmax-normalised option means
        against (1, 0). It replaces the official checkpoint choice on evaluation groups (which
        here would be test data)."""
        import torch

        def rows_fn(rows):
            return cache.get(torch.from_numpy(cache.local(rows)).to(cache.device))

        net.eval()
        cx = support_context(fit_pairs, self.context_cap)
        margin, std = self._predict(net, cx, val_pairs.user, val_pairs.chosen, val_pairs.rejected, rows_fn, with_std=True)
        net.train()
        p = 1.0 / (1.0 + np.exp(-margin))  # softmax of the two means; chosen is option a
        err = np.stack([1.0 - p, p], 1)  # |y − mean| for (chosen, rejected) = (1, 0)
        nll = 0.5 * (err / std) ** 2 + np.log(std) + 0.5 * np.log(2 * np.pi)
        return float(nll.sum(1).mean())

    def _draw_questions(self, batch, off, grp, rng):
        """Split each user's train pairs into context and target questions.

        One context size and one target size are drawn per batch (as the official collate
        function does) and clipped per user. The context is made of whole groups (a random group
        order), so a target never shares a group with its context; at least one group is left for
        targets. Returns padded (B, C) / (B, T) pair indices and masks.
        """
        n_ctx = int(rng.integers(self.ctx_min, self.ctx_max + 1))
        n_tar = int(rng.integers(self.tar_min, self.tar_max + 1))
        ctx_l, tar_l = [], []
        for u in batch:
            p = np.arange(off[u], off[u + 1])
            _, gi = np.unique(grp[p], return_inverse=True)
            gkey = rng.random(gi.max() + 1)
            order = np.lexsort((rng.random(len(p)), gkey[gi]))
            p, gi = p[order], gi[order]
            ends = np.flatnonzero(np.r_[gi[1:] != gi[:-1], True]) + 1  # pairs in the first k groups
            ok = ends[(ends <= n_ctx) & (ends < len(p))]
            c = int(ok.max()) if len(ok) else 0
            ctx_l.append(p[:c])
            tar_l.append(p[c : c + n_tar])
        cw = max(1, max(len(x) for x in ctx_l))
        tw = max(1, max(len(x) for x in tar_l))
        cp = np.zeros((len(batch), cw), np.int64)
        cm = np.zeros((len(batch), cw), bool)
        tp = np.zeros((len(batch), tw), np.int64)
        tm = np.zeros((len(batch), tw), bool)
        for i, (c, t) in enumerate(zip(ctx_l, tar_l)):
            cp[i, : len(c)], cm[i, : len(c)] = c, True
            tp[i, : len(t)], tm[i, : len(t)] = t, True
        return cp, cm, tp, tm

    def _loss(self, net, cache, lc, lr_, cp, cm, tp, tm, rng):
        import torch

        dev = cache.device
        B = cp.shape[0]
        # Options of each question in a random order (a = chosen where the coin says so).
        c_first = rng.random(cp.shape) < 0.5
        t_first = rng.random(tp.shape) < 0.5
        c_rows = np.stack([np.where(c_first, lc[cp], lr_[cp]), np.where(c_first, lr_[cp], lc[cp])], -1).reshape(B, -1)
        c_y = np.stack([c_first, ~c_first], -1).reshape(B, -1).astype(np.float32)
        t_rows = np.stack([np.where(t_first, lc[tp], lr_[tp]), np.where(t_first, lr_[tp], lc[tp])], -1)
        t_y = np.stack([t_first, ~t_first], -1).astype(np.float32)
        # The 4096-wide first layer runs once per distinct row of the batch.
        uniq, inv = np.unique(np.r_[c_rows.ravel(), t_rows.ravel()], return_inverse=True)
        proj = net.project(cache.get(torch.from_numpy(uniq).to(dev)))
        inv_t = torch.from_numpy(inv).to(dev)
        nc = c_rows.size
        hc = net.embed(proj[inv_t[:nc]].view(B, c_rows.shape[1], -1), torch.from_numpy(c_y).to(dev))
        ht = net.embed(proj[inv_t[nc:]].view(B, t_rows.shape[1] * 2, -1), None)
        key_mask = torch.from_numpy(np.repeat(cm, 2, axis=1)).to(dev)
        has_ctx = key_mask.any(1)
        mean, std = net.forward_train(hc, ht, key_mask, has_ctx)
        mean = torch.softmax(mean.view(B, -1, 2), dim=-1)  # the official per-question softmax
        std = std.view(B, -1, 2)
        y = torch.from_numpy(t_y).to(dev)
        logp = torch.distributions.Normal(mean, std).log_prob(y)
        logp = logp * torch.from_numpy(tm).to(dev)[..., None]
        return -logp.sum((1, 2)).mean()

    # ------------------------------------------------------------------ adapt / score
    def adapt(self, support: UserPairs) -> "GPO":
        """The context of each user: its first ``context_cap`` support pairs (none → empty context)."""
        self.context_ = support_context(support, self.context_cap)
        return self

    def score(self, queries: Queries) -> np.ndarray:
        feats = self.ctx_.features

        def rows_fn(rows):
            import torch

            return torch.from_numpy(load_rows(feats, rows, self.mean_, self.inv_std_)).to(self.ctx_.device)

        return self._predict(self.net_, self.context_, queries.user, queries.a, queries.b, rows_fn)

    def _predict(self, net, cx: UserPairs, q_user_all, q_a, q_b, rows_fn, T: int = 512, Q: int = 1024, with_std: bool = False):
        """Margins m(a) − m(b) of queries (user, a, b), each user's context being its pairs in ``cx``
        (and, with ``with_std``, the predicted standard deviations of a and b, shape (n, 2)).

        Queries are cut into rows of up to ``T`` queries of one user, and rows are batched up to
        ``Q`` padded queries; each batch encodes its users' contexts once (per-layer keys and
        values) and decodes all their target points against them.
        """
        import torch

        dev = self.ctx_.device
        c_cnt, c_off = cx.counts(), cx.offsets()
        order = np.argsort(q_user_all, kind="stable")
        q_user = q_user_all[order]
        q_cnt = np.bincount(q_user, minlength=cx.n_users)
        q_off = np.r_[0, np.cumsum(q_cnt)]
        pieces = -(-q_cnt // T)
        r_user = np.repeat(np.arange(cx.n_users), pieces)
        r_piece = np.arange(len(r_user)) - np.repeat(np.r_[0, np.cumsum(pieces)[:-1]], pieces)
        r_start = q_off[r_user] + r_piece * T
        r_len = np.minimum(T, q_off[r_user + 1] - r_start)
        out = np.empty(len(q_user_all), dtype=np.float64)
        stds = np.empty((len(q_user_all), 2), dtype=np.float64) if with_std else None
        i = 0
        with torch.inference_mode():
            while i < len(r_user):
                j, widest = i + 1, r_len[i]
                while j < len(r_user) and max(widest, r_len[j]) * (j + 1 - i) <= Q:
                    widest = max(widest, r_len[j])
                    j += 1
                us = r_user[i:j]
                R = len(us)
                # Context points of the rows' users: (x_chosen, 1) and (x_rejected, 0) per pair.
                ci, cmask = _padded(c_off[us], c_cnt[us])
                pairs = ci[cmask]
                proj_c = net.project(rows_fn(np.r_[cx.chosen[pairs], cx.rejected[pairs]]))
                W = ci.shape[1]
                pc = torch.zeros(R, W, 2, self.d_model, device=dev)
                m_c = torch.from_numpy(cmask).to(dev)
                pc[m_c] = torch.stack([proj_c[: len(pairs)], proj_c[len(pairs) :]], 1)
                yc = torch.tensor([1.0, 0.0], device=dev).repeat(R, W)
                hc = net.embed(pc.view(R, 2 * W, -1), yc)
                key_mask = m_c.repeat_interleave(2, dim=1)
                has_ctx = key_mask.any(1)
                kvs = net.encode_context(hc, key_mask, has_ctx)
                # Target points: both options of every query of the rows.
                ti, tmask = _padded(r_start[i:j], r_len[i:j])
                qs = order[ti[tmask]]
                proj_t = net.project(rows_fn(np.r_[q_a[qs], q_b[qs]]))
                Wt = ti.shape[1]
                pt = torch.zeros(R, Wt, 2, self.d_model, device=dev)
                m_t = torch.from_numpy(tmask).to(dev)
                pt[m_t] = torch.stack([proj_t[: len(qs)], proj_t[len(qs) :]], 1)
                ht = net.embed(pt.view(R, 2 * Wt, -1), None)
                mean, std = net.decode_targets(ht, kvs, key_mask, has_ctx)
                mean = mean.view(R, Wt, 2)[m_t]
                out[qs] = (mean[:, 0] - mean[:, 1]).double().cpu().numpy()
                if with_std:
                    stds[qs] = std.view(R, Wt, 2)[m_t].double().cpu().numpy()
                i = j
        return (out, stds) if with_std else out

    # ------------------------------------------------------------------ bookkeeping
    def param_count(self) -> ParamCount:
        D, d, ff, depth, n = self.ctx_.features.dim, self.d_model, self.dim_feedforward, self.emb_depth, self.num_layers
        embedder = ((D + 1) * d + d) + (depth - 1) * (d * d + d)
        layer = (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d) + 4 * d  # attention, FFN, 2 LayerNorms
        head = (d * ff + ff) + (ff * 2 + 2)
        return ParamCount(shared=embedder + n * layer + head, per_user=0)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(shared=sum(int(p.numel()) for p in self.net_.parameters()), per_user=0)

    def extra_meta(self) -> dict:
        return {
            "train_steps": int(self.steps_),
            "selected_step": int(self.selected_step_),
            "train_nll_last_epoch": self.train_loss_,
            "validation": [[int(s), round(float(v), 5)] for s, v in self.val_history_],
        }

"""VPL: variational preference learning on reward-model features (Poddar et al., NeurIPS 2024).

A user is a latent code z inferred from a few of the user's labelled pairs (the context): a pair
encoder embeds each context pair, single-head self-attention mixes them, a mean pool feeds a
Gaussian posterior q(z | context), and a reward decoder scores a response from [x; z]. Training
maximises the Bradley–Terry likelihood of a target pair given z sampled from the posterior of a
context of 2–8 *other* pairs of the same user, with a cyclically annealed KL term. A new user is
encoded from its support pairs: no gradient steps, no per-user parameters.

See ``vpl.md`` for the official settings and every adaptation.
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
    user_sorted,
)
from bench.progress import step as progress_step


class VPL(Method):
    name: ClassVar[str] = "vpl"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    summary: ClassVar[str] = "variational preference learning: a user latent inferred from context pairs conditions a reward MLP"
    kind: ClassVar[str] = "personalized input"
    test_params: ClassVar[dict] = {"hidden_dim": 32, "latent_dim": 16, "epochs": 2, "batch_size": 16}

    def __init__(
        self,
        hidden_dim: int = 512,
        latent_dim: int = 512,
        lr: float = 1e-4,
        weight_decay: float = 0.001,
        warmup_ratio: float = 0.03,
        max_grad_norm: float = 1.0,
        kl_weight: float = 3e-6,
        anneal: bool = True,
        anneal_steps: int = 1250,
        anneal_baseline: float = 0.1,
        batch_size: int = 32,
        targets_per_user: int = 8,
        epochs: int = 2,
        context_min: int = 2,
        context_max: int = 8,
        context_cap: int = 100,
        null_context_prob: float = 0.05,
        standardize: bool = True,
        bf16: bool = False,
    ):
        self.hidden_dim = hidden_dim
        self.latent_dim = latent_dim
        self.lr = lr
        self.weight_decay = weight_decay
        self.warmup_ratio = warmup_ratio
        self.max_grad_norm = max_grad_norm
        self.kl_weight = kl_weight
        self.anneal = anneal
        self.anneal_steps = anneal_steps
        self.anneal_baseline = anneal_baseline
        self.batch_size = batch_size
        self.targets_per_user = targets_per_user
        self.epochs = epochs
        self.context_min = context_min
        self.context_max = context_max
        self.context_cap = context_cap
        self.null_context_prob = null_context_prob
        self.standardize = standardize
        self.bf16 = bf16

    @classmethod
    def source_files(cls) -> list[Path]:
        here = Path(__file__).parent
        return [Path(__file__), here / "_vpl_net.py", here / "_incontext.py"]

    # ------------------------------------------------------------------ checks
    def _check_params(self) -> None:
        for k in ("hidden_dim", "latent_dim", "batch_size", "targets_per_user", "context_max", "context_cap", "anneal_steps"):
            check_positive(k, getattr(self, k))
        check_positive("epochs", self.epochs, allow_zero=True)
        check_positive("context_min", self.context_min)
        check_range("context_min..context_max", self.context_min, self.context_max)
        check_positive("lr", self.lr, integer=False)
        for k in ("weight_decay", "kl_weight", "max_grad_norm"):
            check_positive(k, getattr(self, k), integer=False, allow_zero=True)
        for k in ("warmup_ratio", "anneal_baseline", "null_context_prob"):
            v = getattr(self, k)
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
                raise BenchError(f"parameter {k} must be in [0, 1], got {v!r}", hint=f"pass --param vpl.{k}=<0..1>")

    # ------------------------------------------------------------------ fit
    def fit(self, train: UserPairs, ctx: Context) -> "VPL":
        import torch

        from bench.methods._vpl_net import VPLNet, annealing, kl_to_prior

        self._check_params()
        self.mean_, self.inv_std_, cache = train_row_cache("VPL", train, ctx, self.standardize, self.bf16)
        self.ctx_ = ctx
        dev = ctx.device
        feats = ctx.features
        lc = torch.from_numpy(cache.local(train.chosen)).to(dev)
        lr_ = torch.from_numpy(cache.local(train.rejected)).to(dev)

        with torch_seed_everything(ctx.seed, "vpl-init"):
            net = VPLNet(feats.dim, self.hidden_dim, self.latent_dim, bool(self.bf16)).to(dev)
        decay = [p for n, p in net.named_parameters() if not n.endswith("bias")]
        no_decay = [p for n, p in net.named_parameters() if n.endswith("bias")]
        opt = make_adam(
            [{"params": decay, "weight_decay": self.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
            self.lr,
            dev,
            decoupled=True,
        )

        n = len(train)
        off = train.offsets()
        user = train.user
        grp = group_codes(train)
        rng = rng_for(ctx.seed, "vpl-train")
        gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
        per_epoch = -(-n // self.batch_size)
        total = self.epochs * per_epoch
        warmup = int(self.warmup_ratio * total)
        step = 0
        losses = []
        net.train()
        for epoch in range(self.epochs):
            progress_step(epoch, self.epochs, "epoch")
            perm = self._epoch_order(user, off, rng)
            for start in range(0, n, self.batch_size):
                t = perm[start : start + self.batch_size]
                slot_pairs, mask = self._draw_contexts(t, user, grp, off, rng)
                for g in opt.param_groups:
                    g["lr"] = self.lr * cosine_lr(step, total, warmup)
                w_kl = self.kl_weight * (annealing(step, self.anneal_steps, self.anneal_baseline) if self.anneal else 1.0)
                loss, bt = self._loss(net, cache, lc, lr_, t, slot_pairs, mask, gen, w_kl, kl_to_prior)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                if self.max_grad_norm > 0:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), self.max_grad_norm)
                opt.step()
                losses.append(bt)
                step += 1
        net.eval()
        for p in net.parameters():
            p.requires_grad_(False)
        self.net_ = net
        self.steps_ = step
        self.train_bt_loss_ = float(np.mean(losses[-per_epoch:])) if losses else float("nan")
        return self

    def _epoch_order(self, user, off, rng) -> np.ndarray:
        """Every train pair once, in runs of ``targets_per_user`` pairs of one user, runs shuffled.

        A batch of 32 then holds a few users' pairs, as an official batch holds a few user types'
        pairs (2–4 types, contexts from one survey pool per type); their contexts overlap, so each
        distinct context pair goes through the D-wide pair encoder once per batch.
        """
        n = len(user)
        key = rng.random(n)
        within = np.lexsort((key, user))  # each user's pairs in a random order
        rank = np.arange(n) - off[user[within]]
        run = user[within] * (n + 1) + rank // self.targets_per_user  # one id per (user, run)
        _, run_id = np.unique(run, return_inverse=True)
        run_key = rng.random(run_id.max() + 1)
        return within[np.lexsort((rank, run_key[run_id]))]

    def _draw_contexts(self, t, user, grp, off, rng):
        """Context pairs of each target: 2–8 other train pairs of its user, outside its group.

        Returns (B, C) pair indices and a (B, C) mask; a row with no pair is a null context (too
        few other pairs, or drawn with probability ``null_context_prob``).
        """
        picks = []
        for j in t:
            u = user[j]
            cand = np.arange(off[u], off[u + 1])
            cand = cand[grp[cand] != grp[j]]
            null = rng.random() < self.null_context_prob
            c = int(rng.integers(self.context_min, self.context_max + 1))
            if null or len(cand) == 0:
                picks.append(cand[:0])
            else:
                picks.append(rng.choice(cand, size=min(c, len(cand)), replace=False))
        width = max(1, max(len(p) for p in picks))
        idx = np.zeros((len(t), width), dtype=np.int64)
        mask = np.zeros((len(t), width), dtype=bool)
        for i, p in enumerate(picks):
            idx[i, : len(p)] = p
            mask[i, : len(p)] = True
        return idx, mask

    def _loss(self, net, cache, lc, lr_, t, ctx_pairs, mask, gen, w_kl, kl_to_prior):
        import torch
        import torch.nn.functional as F

        dev = cache.device
        B = len(t)
        has = mask.any(1)
        mean = torch.zeros(B, self.latent_dim, device=dev)
        log_var = torch.zeros(B, self.latent_dim, device=dev)
        z = torch.zeros(B, self.latent_dim, device=dev)
        if has.any():
            # Distinct context pairs of the batch go through the pair encoder once.
            uniq, inv = np.unique(ctx_pairs[has][mask[has]], return_inverse=True)
            slot = np.zeros((int(has.sum()), mask.shape[1]), dtype=np.int64)
            slot[mask[has]] = inv
            u_t = torch.from_numpy(uniq).to(dev)
            m, lv = net.posterior(
                cache.get(lc[u_t]), cache.get(lr_[u_t]), torch.from_numpy(slot).to(dev), torch.from_numpy(mask[has]).to(dev)
            )
            h_t = torch.from_numpy(np.flatnonzero(has)).to(dev)
            mean = mean.index_copy(0, h_t, m)
            log_var = log_var.index_copy(0, h_t, lv)
            z = z.index_copy(0, h_t, net.sample(m, lv, gen))
        t_t = torch.from_numpy(np.asarray(t)).to(dev)
        zp = net.decoder.z_part(z)
        rc = net.decoder.head(net.decoder.x_part(cache.get(lc[t_t])) + zp)
        rr = net.decoder.head(net.decoder.x_part(cache.get(lr_[t_t])) + zp)
        bt = F.softplus(-(rc - rr)).mean()
        # Null contexts have posterior = prior, so their KL term is exactly 0.
        kl = kl_to_prior(mean, log_var).mean()
        return bt + w_kl * kl, float(bt.detach())

    # ------------------------------------------------------------------ adapt / score
    def adapt(self, support: UserPairs) -> "VPL":
        """Encode each user's first ``context_cap`` support pairs into z (no gradient steps).

        A user without support pairs gets z = 0, the prior mean: the decoder's population reward
        (trained on null contexts, see ``null_context_prob``).
        """
        import torch

        ctxp = support_context(support, self.context_cap)
        counts = ctxp.counts()
        off = ctxp.offsets()
        dev = self.ctx_.device
        z = torch.zeros(support.n_users, self.latent_dim, device=dev)
        active = np.flatnonzero(counts > 0)
        cum = np.cumsum(counts[active])
        i = 0
        chunk = 1024
        with torch.inference_mode():
            while i < len(active):
                before = cum[i - 1] if i else 0
                j = max(i + 1, int(np.searchsorted(cum, before + chunk, side="right")))
                us = active[i:j]
                lo, hi = off[us[0]], off[us[-1] + 1]
                xc = torch.from_numpy(load_rows(self.ctx_.features, ctxp.chosen[lo:hi], self.mean_, self.inv_std_)).to(dev)
                xr = torch.from_numpy(load_rows(self.ctx_.features, ctxp.rejected[lo:hi], self.mean_, self.inv_std_)).to(dev)
                width = int(counts[us].max())
                pos = np.arange(width)[None, :]
                mask = pos < counts[us][:, None]
                slot = np.where(mask, off[us][:, None] - lo + pos, 0)
                m, _ = self.net_.posterior(xc, xr, torch.from_numpy(slot).to(dev), torch.from_numpy(mask).to(dev))
                z[torch.from_numpy(us).to(dev)] = self.net_.latent_code(m)
                i = j
        self.z_ = z
        self.n_context_ = counts
        return self

    def score(self, queries: Queries) -> np.ndarray:
        import torch

        dec = self.net_.decoder
        dev = self.ctx_.device
        order = user_sorted(queries)
        out = np.empty(len(queries), dtype=np.float64)
        chunk = 1024
        with torch.inference_mode():
            zp = dec.z_part(self.z_)  # (U, H): the latent's share of the first layer, once per user
            for s in range(0, len(order), chunk):
                q = order[s : s + chunk]
                xa = torch.from_numpy(load_rows(self.ctx_.features, queries.a[q], self.mean_, self.inv_std_)).to(dev)
                xb = torch.from_numpy(load_rows(self.ctx_.features, queries.b[q], self.mean_, self.inv_std_)).to(dev)
                zq = zp[torch.from_numpy(queries.user[q]).to(dev)]
                ra = dec.head(dec.x_part(xa) + zq)
                rb = dec.head(dec.x_part(xb) + zq)
                out[q] = (ra - rb).double().cpu().numpy()
        return out

    # ------------------------------------------------------------------ bookkeeping
    def param_count(self) -> ParamCount:
        D, H, L = self.ctx_.features.dim, self.hidden_dim, self.latent_dim
        encoder = (2 * D * H + H) + (H * H + H) + (H * L + L)
        set_encoder = 5 * (L * L + L)  # query, key, value, mean and log-variance maps
        decoder = ((D + L) * H + H) + (H * H + H) + (H + 1)
        return ParamCount(shared=encoder + set_encoder + decoder, per_user=0)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(shared=sum(int(p.numel()) for p in self.net_.parameters()), per_user=0)

    def extra_meta(self) -> dict:
        return {"train_steps": int(self.steps_), "train_bt_loss_last_epoch": self.train_bt_loss_}

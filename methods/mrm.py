"""MRM — Meta Reward Modeling (Cai et al., SIGIR 2026), faithful to ModalityDance/MRM and fast.

The model: ``r_w(x) = softmax(w)ᵀ W (s·x)`` with K linear base rewards ``W ∈ R^{K×D}`` (no bias,
no nonlinearity), feature scale ``s = 0.01`` and per-user mixing logits ``w ∈ R^K``. Shared and
meta-learned: ``W`` and the initial logits ``w0``. Each user adapts ``w`` from ``w0`` by a few
(default one) steps of a *fresh* Adam (the official ``higher`` inner loop) or of SGD (the paper's
Eq. 8) on its support pairs; meta-training differentiates through that adaptation (second order).

Why this is fast: the pair margins depend on ``W`` only through the K-dimensional projections
``h = s·W d`` of the pairs' feature differences ``d``. One meta-step therefore (1) gathers the
meta-batch's pairs and projects them with one (n × D)·(D × K) product, (2) runs the inner loop,
the query loss, the robust objective and their exact reverse-mode derivatives — all in K
dimensions, derived by hand below — and (3) maps the K-dimensional pair cotangents back to ``W``
with one (K × n)·(n × D) product. Adam, clipping and the cosine schedule act on one flat float32
vector holding ``(W, w0)``. There is no autograd graph, no deep copy, no per-user Python loop.

Derivatives (per user; ``p = softmax(w)``, ``J(p) = diag(p) − ppᵀ``, ``σ`` the logistic):

* support margins ``m_s = pᵀh_s``, ``r_s = σ(−m_s)``; ``a = −(1/S) Σ r_s h_s`` is ∂L_S/∂p and
  the inner gradient is ``g = J(p) a``;
* Adam's first step from a fresh state moves ``w`` by ``lr·g/(|g| + ε)`` (bias corrections
  cancel), whose derivative ``lr·ε/(|g| + ε)²`` is all the second-order signal a one-step
  Adam inner loop carries; later steps follow the general moment recursions;
* the cotangent ``ḡ`` of ``g`` flows back as ``z = J(p)ḡ``:
  ``∂/∂h_s = −(1/S)[r_s z − (zᵀh_s) r_s(1 − r_s) p]`` and
  ``∂/∂p = ḡ⊙a − ḡ (pᵀa) − (ḡᵀp) a + (1/S) Σ r_s(1 − r_s)(zᵀh_s) h_s``, then ``∂/∂w = J(p) ∂/∂p``.

``tests/test_mrm.py`` checks every piece against finite differences and against a direct
autograd implementation of the official model (inner step through ``torch.autograd.grad``
with ``create_graph=True``, exactly what ``higher`` records).
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable, ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs, count_tensors
from bench.errors import BenchError
from bench.methods._common import unique_rows
from bench.progress import step as progress_step
from bench.threads import single_threaded_blas

ADAM_BETAS = (0.9, 0.999)
ADAM_EPS = 1e-8
TRAIN_INNER_ADAM = ("higher-0.2.1", "torch")
INNER_OPTIMIZERS = ("adam", "sgd")
OBJECTIVES = ("rpo", "sum")


# ============================================================================ BLAS threads
# The meta-training loop issues tens of thousands of small products ((n × D)·(D × K), n ≈ 10–300).
# OpenBLAS splits those over its threads, and on a shared machine whose cores are busy its threads
# wait for each other: a 150 × 4096 × 2 product measured 18 ms with two threads under load against
# 0.2 ms on one. ``single_threaded_blas`` (threadpoolctl) runs the loop on one BLAS thread.


# ============================================================================ K-dimensional math
# Everything below works on float64 arrays: h (n × K) pair projections, per-user rows (B × K).
# Segments: the pairs of user b are rows [starts[b], starts[b] + counts[b]) (every count ≥ 1).


def softmax(w: np.ndarray) -> np.ndarray:
    e = np.exp(w - w.max(axis=-1, keepdims=True))
    e /= e.sum(axis=-1, keepdims=True)
    return e


def _jvp_softmax(p: np.ndarray, v: np.ndarray) -> np.ndarray:
    """J(p)·v for J = diag(p) − ppᵀ (symmetric), row-wise."""
    return p * (v - (p * v).sum(axis=1, keepdims=True))


def segments(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(segment id of each row, first row of each segment, 1/count as a column) for counts ≥ 1."""
    counts = np.asarray(counts, dtype=np.int64)
    starts = np.cumsum(counts) - counts
    return np.repeat(np.arange(len(counts)), counts), starts, (1.0 / counts)[:, None]


def adam_eps(t: int, eps_hat: bool) -> float:
    """The ε that Adam's step t adds to √v̂ (the bias-corrected second moment).

    ``torch.optim.Adam`` adds ε to √v̂. ``higher`` 0.2.1 — the version the official requirements
    pin — adds it to √v before the bias correction, which is ε/√(1 − β2^t) added to √v̂
    (3.16e-7 at the first step); higher's unreleased master matches torch.
    """
    return ADAM_EPS / math.sqrt(1 - ADAM_BETAS[1] ** t) if eps_hat else ADAM_EPS


def inner_loop(
    w: np.ndarray,
    hs: np.ndarray,
    seg: np.ndarray,
    starts: np.ndarray,
    inv: np.ndarray,
    steps: int,
    optimizer: str,
    lr: float,
    keep: bool = False,
    closed_form: bool = True,
    eps_hat: bool = False,
) -> tuple[np.ndarray, list]:
    """``steps`` updates of every row of ``w`` (B × K) on its user's mean BT support loss.

    ``seg``/``starts``/``inv`` describe the users' support rows of ``hs`` (see :func:`segments`).
    Adam starts from a fresh state (a new ``torch.optim.Adam`` per user in the official code) and
    keeps it across the steps of this loop; ``eps_hat`` selects higher 0.2.1's placement of ε
    (see :func:`adam_eps`). Returns the adapted logits and, when ``keep``, the tape that
    :func:`inner_loop_vjp` needs.
    """
    from scipy.special import expit

    b1, b2 = ADAM_BETAS
    tape: list = []
    m1 = v = None
    for t in range(1, steps + 1):
        p = softmax(w)
        r = expit(-np.einsum("nk,nk->n", p[seg], hs))
        a = np.add.reduceat(r[:, None] * hs, starts, axis=0)
        a *= -inv
        g = _jvp_softmax(p, a)
        if steps == 1 and closed_form:
            # one step from a fresh Adam: (lr/bc1)·(1−β1)g / (√((1−β2)g²)/√bc2 + ε) = lr·g/(|g| + ε)
            eps = adam_eps(1, eps_hat)
            ag = np.abs(g) + eps if optimizer == "adam" else None
            w = w - (lr * g / ag if optimizer == "adam" else lr * g)
            if keep:
                tape.append((p, r, a, g, ag, eps, None))
            break
        if optimizer == "sgd":
            w = w - lr * g
            if keep:
                tape.append((p, r, a, g, None, None, None))
            continue
        if m1 is None:
            m1, v = (1 - b1) * g, (1 - b2) * (g * g)
        else:
            m1, v = b1 * m1 + (1 - b1) * g, b2 * v + (1 - b2) * (g * g)
        sv = np.sqrt(v)
        den = sv * (1.0 / math.sqrt(1 - b2**t)) + adam_eps(t, eps_hat)
        w = w - (lr / (1 - b1**t)) * m1 / den
        if keep:
            tape.append((p, r, a, g, m1, sv, den))
    return w, tape


def inner_loop_vjp(
    wbar: np.ndarray,
    tape: list,
    hs: np.ndarray,
    seg: np.ndarray,
    starts: np.ndarray,
    inv: np.ndarray,
    optimizer: str,
    lr: float,
    closed_form: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Reverse mode through :func:`inner_loop` (call with the same ``closed_form``): given
    ∂F/∂w_T (B × K), return ∂F/∂w_0 (B × K) and ∂F/∂h_s (n × K)."""
    b1, b2 = ADAM_BETAS
    gh = None
    m1bar = vbar = 0.0
    for t in range(len(tape), 0, -1):
        p, r, a, g, m1, sv, den = tape[t - 1]
        if len(tape) == 1 and closed_form:
            # d/dg of lr·g/(|g| + ε) is lr·ε/(|g| + ε)²  (here m1 holds |g| + ε and sv holds ε)
            gbar = -lr * wbar if optimizer == "sgd" else (-lr * sv) * wbar / (m1 * m1)
        elif optimizer == "sgd":
            gbar = -lr * wbar  # w_t = w_{t−1} − lr·g_t
        else:
            # w_t = w_{t−1} − c1·m1_t/den_t, den_t = sv_t/√bc2 + ε, sv_t = √v_t
            c1 = lr / (1 - b1**t)
            q = wbar * (c1 / den)
            m1bar = m1bar - q
            svbar = q * (m1 / den) * (1.0 / math.sqrt(1 - b2**t))
            if t == 1:
                # v_1 = (1−β2)g², so ∂sv/∂g = √(1−β2)·sign(g): no division by sv (which may be 0)
                gbar = (1 - b1) * m1bar + math.sqrt(1 - b2) * np.sign(g) * svbar + 2 * (1 - b2) * g * vbar
            else:
                with np.errstate(divide="ignore", invalid="ignore"):
                    vbar = vbar + np.where(sv > 0, svbar / (2 * sv), 0.0)
                gbar = (1 - b1) * m1bar + 2 * (1 - b2) * g * vbar
                m1bar = b1 * m1bar
                vbar = b2 * vbar
        # g = J(p)·a(p, h): pull gbar back to p and to the support projections.
        z = _jvp_softmax(p, gbar)
        zs = z[seg]
        zh = np.einsum("nk,nk->n", zs, hs)
        rr = r * (1 - r)
        pbar = gbar * (a - (p * a).sum(axis=1, keepdims=True)) - (p * gbar).sum(axis=1, keepdims=True) * a
        pbar += np.add.reduceat((rr * zh)[:, None] * hs, starts, axis=0) * inv
        step_gh = (rr * zh)[:, None] * p[seg] - r[:, None] * zs
        step_gh *= inv[seg]
        gh = step_gh if gh is None else gh + step_gh
        wbar = wbar + _jvp_softmax(p, pbar)
    return wbar, (np.zeros_like(hs) if gh is None else gh)


def combine_losses(losses: np.ndarray, objective: str, rho: float, gamma: float) -> tuple[float, np.ndarray, dict]:
    """The outer objective over a meta-batch's query losses, its gradient, and its internals.

    ``rpo`` (official ``train.py: RPO``): τ = quantile(L, 1 − ρ) (linear interpolation, as
    ``torch.quantile``); soft (γ > 0): Σ σ((L − τ)/γ)·L with the weights *and* τ differentiated;
    hard (γ = 0): Σ 1[L > τ]·L with the mask held constant. ``sum``: Σ L.
    """
    from scipy.special import expit

    n = len(losses)
    if objective == "sum":
        return float(losses.sum()), np.ones(n), {"tau": None, "weights": np.ones(n)}
    pos = (1.0 - rho) * (n - 1)
    lo = int(math.floor(pos))
    frac = pos - lo
    hi = min(lo + 1, n - 1)
    order = np.argsort(losses, kind="stable")
    tau = float(losses[order[lo]]) + frac * float(losses[order[hi]] - losses[order[lo]])
    if gamma == 0:
        mask = (losses > tau).astype(np.float64)
        return float(mask @ losses), mask, {"tau": tau, "weights": mask}
    wts = expit((losses - tau) / gamma)
    s = losses * wts * (1 - wts) / gamma
    grad = wts + s
    ssum = float(s.sum())
    grad[order[lo]] -= ssum * (1.0 - frac)
    grad[order[hi]] -= ssum * frac
    return float(wts @ losses), grad, {"tau": tau, "weights": wts}


def meta_grads(
    w_start: np.ndarray,
    hs: np.ndarray,
    sup: tuple[np.ndarray, np.ndarray, np.ndarray],
    hq: np.ndarray,
    qry: tuple[np.ndarray, np.ndarray, np.ndarray],
    steps: int,
    optimizer: str,
    lr: float,
    objective: str,
    rho: float,
    gamma: float,
    fast: bool = True,
    eps_hat: bool = False,
) -> tuple[float, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One meta-batch: adapt each user from ``w_start`` on its support rows of ``hs``, score its
    query rows of ``hq``, combine the query losses. ``sup``/``qry`` are :func:`segments` triples;
    ``w_start`` is (K,) when every user starts from the same w0 (MRM) or (B × K).

    Returns (objective, query losses (B,), ∂/∂w_start (same shape as ``w_start``),
    ∂/∂hs (ns × K), ∂/∂hq (nq × K)).
    """
    if fast and steps == 1 and w_start.ndim == 1:
        return _meta_grads_one_step(w_start, hs, sup, hq, qry, optimizer, lr, objective, rho, gamma, eps_hat)
    from scipy.special import expit

    shared = w_start.ndim == 1
    seg_q, st_q, inv_q = qry
    if shared:
        w_start = np.broadcast_to(w_start, (len(st_q), len(w_start)))
    w, tape = inner_loop(w_start, hs, *sup, steps, optimizer, lr, keep=True, closed_form=fast, eps_hat=eps_hat)
    p = softmax(w)
    ps = p[seg_q]
    mq = np.einsum("nk,nk->n", ps, hq)
    losses = np.add.reduceat(np.logaddexp(0.0, -mq), st_q) * inv_q[:, 0]
    obj, c, _ = combine_losses(losses, objective, rho, gamma)
    eq = expit(-mq)
    eq *= -(c * inv_q[:, 0])[seg_q]
    ghq = eq[:, None] * ps
    wbar = _jvp_softmax(p, np.add.reduceat(eq[:, None] * hq, st_q, axis=0))
    if steps > 0:
        wbar, ghs = inner_loop_vjp(wbar, tape, hs, *sup, optimizer, lr, closed_form=fast)
    else:
        ghs = np.zeros_like(hs)
    return obj, losses, (wbar.sum(axis=0) if shared else wbar), ghs, ghq


def _meta_grads_one_step(w0, hs, sup, hq, qry, optimizer, lr, objective, rho, gamma, eps_hat):
    """:func:`meta_grads` for the official setting — every user starts from the same w0 and
    takes one inner step — with the shared softmax hoisted and the one-step closed forms.
    ``tests/test_mrm.py`` checks it against the general path."""
    from scipy.special import expit

    seg_s, st_s, inv_s = sup
    seg_q, st_q, inv_q = qry
    e = np.exp(w0 - w0.max())
    p = e / e.sum()  # (K,) shared by every user of the batch
    r = expit(-(hs @ p))
    a = np.add.reduceat(r[:, None] * hs, st_s, axis=0)
    a *= -inv_s
    a_c = a - (a @ p)[:, None]
    g = p * a_c
    if optimizer == "adam":
        eps = adam_eps(1, eps_hat)
        ag = np.abs(g) + eps
        w = w0 - lr * g / ag
    else:
        w = w0 - lr * g
    P = softmax(w)
    Pq = P[seg_q]
    mq = np.einsum("nk,nk->n", Pq, hq)
    losses = np.add.reduceat(np.logaddexp(0.0, -mq), st_q) * inv_q[:, 0]
    obj, c, _ = combine_losses(losses, objective, rho, gamma)
    eq = expit(-mq)
    eq *= (-c * inv_q[:, 0])[seg_q]
    ghq = eq[:, None] * Pq
    beta = _jvp_softmax(P, np.add.reduceat(eq[:, None] * hq, st_q, axis=0))
    gbar = beta * ((-lr * eps) / (ag * ag)) if optimizer == "adam" else -lr * beta
    gp = (gbar @ p)[:, None]
    z = p * (gbar - gp)
    zs = z[seg_s]
    zh = np.einsum("nk,nk->n", zs, hs)
    rrzh = r * (1 - r) * zh
    pbar = gbar * a_c - gp * a
    pbar += np.add.reduceat(rrzh[:, None] * hs, st_s, axis=0) * inv_s
    ghs = rrzh[:, None] * p - r[:, None] * zs
    ghs *= inv_s[seg_s]
    wbar = beta.sum(axis=0) + (p * (pbar - (pbar @ p)[:, None])).sum(axis=0)
    return obj, losses, wbar, ghs, ghq


def cosine_lambda(step: int, warmup_steps: int, total_steps: int) -> float:
    """The multiplier of ``transformers.get_cosine_schedule_with_warmup`` (half a cosine)."""
    if step < warmup_steps:
        return step / max(1, warmup_steps)
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return max(0.0, 0.5 * (1.0 + math.cos(math.pi * progress)))


# ============================================================================ training data layout


class _Layout:
    """Seen users' training pairs grouped for the per-epoch support/query re-split.

    Pairs are reordered by (user, group); ``diff`` holds their float32 feature differences.
    Only users with at least one pair take part ("active" users, local index 0..A−1).
    """

    def __init__(self, train: UserPairs, features, query_fraction: float, with_diff: bool = True):
        order = np.lexsort((np.arange(len(train)), train.group, train.user))
        user = train.user[order]
        group = train.group[order]
        self.pair_index = order  # position in ``train`` of each layout pair
        self.active = np.unique(user)  # split-level user index of each active user
        self.pair_user = np.searchsorted(self.active, user)
        new_group = np.r_[True, (group[1:] != group[:-1]) | (user[1:] != user[:-1])]
        self.pair_group = np.cumsum(new_group) - 1
        self.n_groups = int(self.pair_group[-1]) + 1 if len(user) else 0
        first = np.flatnonzero(new_group)
        self.group_user = self.pair_user[first]
        self.user_ng = np.bincount(self.group_user, minlength=len(self.active))
        self.user_gstart = np.r_[0, np.cumsum(self.user_ng)[:-1]]
        self.user_nq = np.maximum(1, np.floor(self.user_ng * query_fraction).astype(np.int64))
        self.user_np = np.bincount(self.pair_user, minlength=len(self.active))  # pairs per user
        self.user_pstart = np.cumsum(self.user_np) - self.user_np  # each user's pairs are contiguous
        self.diff = features.diff(train.chosen[order], train.rejected[order]) if with_diff else None

    @property
    def n_active(self) -> int:
        return len(self.active)


class _Epoch:
    """One epoch's visiting order and support/query re-split, laid out step by step.

    Entries (pair, role) are sorted by (meta-batch, role, user position): a step's block is
    contiguous, supports first, each user's pairs contiguous in visiting order.
    """

    def __init__(self, lay: _Layout, rng: np.random.Generator, meta_batch: int, split: bool):
        A = lay.n_active
        perm = rng.permutation(A)
        pos = np.empty(A, dtype=np.int64)
        pos[perm] = np.arange(A)
        pg = lay.pair_group
        if split:
            key = rng.random(lay.n_groups)
            order = np.lexsort((key, lay.group_user))
            rank = np.empty(lay.n_groups, dtype=np.int64)
            rank[order] = np.arange(lay.n_groups) - lay.user_gstart[lay.group_user[order]]
            is_q = rank < lay.user_nq[lay.group_user]
            single = lay.user_ng[lay.group_user] == 1
            is_s = ~is_q | single  # one group: support = query (official MetaDataset)
            sup = np.flatnonzero(is_s[pg])
            qry = np.flatnonzero(is_q[pg])
        else:
            sup = np.empty(0, dtype=np.int64)
            qry = np.arange(len(pg))
        pair = np.concatenate([sup, qry])
        role = np.concatenate([np.zeros(len(sup), np.int64), np.ones(len(qry), np.int64)])
        upos = pos[lay.pair_user[pair]]
        o = np.lexsort((pair, upos, role, upos // meta_batch))
        self.pair = pair[o]
        self.local = (upos[o] % meta_batch).astype(np.int64)  # user's slot in its meta-batch
        # row of each entry in the meta-batch's users' pair blocks laid end to end
        n_pairs = lay.user_np[perm]  # by position
        ex_p = np.cumsum(n_pairs) - n_pairs
        first_pos = (np.arange(A) // meta_batch) * meta_batch
        block_off = ex_p - ex_p[first_pos]
        u = lay.pair_user[self.pair]
        self.hidx = block_off[pos[u]] + self.pair - lay.user_pstart[u]
        self.n_s = np.bincount(upos[role == 0], minlength=A)  # by visiting position
        self.n_q = np.bincount(upos[role == 1], minlength=A)
        self.cum = np.concatenate([[0], np.cumsum(self.n_s + self.n_q)])
        # first row of each user's segment inside its meta-batch's support / query block
        first = first_pos
        ex_s = np.cumsum(self.n_s) - self.n_s
        ex_q = np.cumsum(self.n_q) - self.n_q
        self.st_s = ex_s - ex_s[first]
        self.st_q = ex_q - ex_q[first]
        with np.errstate(divide="ignore"):
            self.inv_s = (1.0 / self.n_s)[:, None]
            self.inv_q = (1.0 / self.n_q)[:, None]
        self.users = perm  # active-user index at each position
        self.meta_batch = meta_batch
        self.n_steps = -(-A // meta_batch)

    def step(self, j: int):
        """(first, end position, pair rows, support count, support segments, query segments,
        entry rows in the batch's pair blocks)."""
        p0 = j * self.meta_batch
        p1 = min(p0 + self.meta_batch, len(self.users))
        e0, e1 = self.cum[p0], self.cum[p1]
        ns = int(self.st_s[p1 - 1] + self.n_s[p1 - 1])
        loc = self.local[e0:e1]
        sup = (loc[:ns], self.st_s[p0:p1], self.inv_s[p0:p1])
        qry = (loc[ns:], self.st_q[p0:p1], self.inv_q[p0:p1])
        return p0, p1, self.pair[e0:e1], ns, sup, qry, self.hidx[e0:e1]


# ============================================================================ the method


class MRM(Method):
    name: ClassVar[str] = "mrm"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"features"})
    summary: ClassVar[str] = (
        "Meta Reward Modeling: K linear base rewards mixed by softmax(w); w0 and bases meta-learned "
        "through a one-step inner loop, RPO outer objective (the paper's method)"
    )
    kind: ClassVar[str] = "meta-learning"
    test_params: ClassVar[dict] = {"epochs": 4}

    #: analysis hook (not a parameter): if set, called as ``on_epoch(epoch, self)`` after every
    #: epoch with ``W_``/``w0_`` holding the current state, so ``adapt``/``score`` work on it.
    on_epoch: Callable[[int, "MRM"], Any] | None = None

    # switches the ablations flip (class level, never parameters)
    _per_user_training: ClassVar[bool] = False  # mrm-no-meta: each seen user trains its own w

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
        objective: str = "rpo",
        rho: float = 0.5,
        gamma: float = 0.5,
        query_fraction: float = 0.9,
        warmup: float = 0.05,
        grad_clip: float | None = 1.0,
        early_stopping: bool = False,
        val_fraction: float = 0.1,
        patience: int | None = 20,
        train_inner_adam: str = "higher-0.2.1",
    ):
        self.n_basis = n_basis
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
        self.early_stopping = early_stopping
        self.val_fraction = val_fraction
        self.patience = patience
        self.train_inner_adam = train_inner_adam

    # ------------------------------------------------------------------ metadata
    @classmethod
    def source_files(cls) -> list[Path]:
        here = Path(__file__).parent
        return [here / "mrm.py", here / "mrm_ablations.py"]

    # ------------------------------------------------------------------ validation
    def _check_params(self) -> None:
        def bad(msg: str, hint: str) -> BenchError:
            return BenchError(f"{self.name}: {msg}", hint=hint)

        def is_int(x) -> bool:
            return isinstance(x, (int, np.integer)) and not isinstance(x, bool)

        if not is_int(self.n_basis) or self.n_basis < 1:
            raise bad(f"n_basis must be an integer ≥ 1, got {self.n_basis!r}", "the paper uses n_basis=2")
        if not self.feature_scale > 0:
            raise bad(f"feature_scale must be > 0, got {self.feature_scale!r}", "the official code uses 0.01")
        for key in ("epochs", "inner_steps", "eval_inner_steps"):
            val = getattr(self, key)
            if not is_int(val) or val < 0:
                raise bad(f"{key} must be an integer ≥ 0, got {val!r}", f"e.g. --param {self.name}.{key}=1")
        if not is_int(self.meta_batch) or self.meta_batch < 1:
            raise bad(f"meta_batch must be an integer ≥ 1, got {self.meta_batch!r}", "the paper uses 2 users per meta-batch")
        for key in ("inner_lr", "meta_lr"):
            if not getattr(self, key) > 0:
                raise bad(f"{key} must be > 0, got {getattr(self, key)!r}", "PRISM uses 1e-3, Reddit 5e-3")
        if self.inner_optimizer not in INNER_OPTIMIZERS:
            raise bad(f"inner_optimizer must be one of {INNER_OPTIMIZERS}, got {self.inner_optimizer!r}",
                      "'adam' is the official inner loop, 'sgd' the paper's Eq. 8")
        if self.train_inner_adam not in TRAIN_INNER_ADAM:
            raise bad(f"train_inner_adam must be one of {TRAIN_INNER_ADAM}, got {self.train_inner_adam!r}",
                      "'higher-0.2.1' is what the official requirements install; 'torch' is torch.optim.Adam")
        if self.objective not in OBJECTIVES:
            raise bad(f"objective must be one of {OBJECTIVES}, got {self.objective!r}", "'rpo' is the paper's objective")
        if not (isinstance(self.rho, (int, float)) and 0.0 < self.rho <= 1.0):
            raise bad(f"rho (the share of hard users RPO keeps) must be in (0, 1], got {self.rho!r}",
                      "the paper uses rho=0.5 (Fig. 4 also 0.1 and 0.2)")
        if not (isinstance(self.gamma, (int, float)) and self.gamma >= 0.0 and math.isfinite(self.gamma)):
            raise bad(f"gamma (RPO smoothing) must be ≥ 0, got {self.gamma!r}",
                      "gamma=0 is hard filtering; the paper uses 0.5")
        if not 0.0 < self.query_fraction < 1.0:
            raise bad(f"query_fraction must be in (0, 1), got {self.query_fraction!r}",
                      "the official code uses 0.9 (90% of a user's groups are the query set)")
        if not 0.0 <= self.warmup < 1.0:
            raise bad(f"warmup must be in [0, 1), got {self.warmup!r}", "the official code uses 0.05")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise bad(f"grad_clip must be > 0 or null, got {self.grad_clip!r}", "the official code clips at 1.0")
        if self.early_stopping:
            if not 0.0 < self.val_fraction < 1.0:
                raise bad(f"val_fraction must be in (0, 1), got {self.val_fraction!r}", "e.g. 0.1")
            if self.patience is not None and (not is_int(self.patience) or self.patience < 1):
                raise bad(f"patience must be an integer ≥ 1 or null, got {self.patience!r}", "e.g. 20")

    # ------------------------------------------------------------------ fit
    def fit(self, train: UserPairs, ctx: Context) -> "MRM":
        self._check_params()
        if ctx.features is None:
            raise BenchError(f"{self.name} needs response features", hint="use a dataset that provides features")
        self.ctx_ = ctx
        t0 = time.perf_counter()
        counts = train.counts()
        seen_idx = np.flatnonzero(train.seen)
        self.seen_without_pairs_ = int((counts[seen_idx] == 0).sum())
        if self.early_stopping:
            fit_part, val_part = train.carve_validation(self.val_fraction)
        else:
            fit_part, val_part = train, None
        lay = _Layout(fit_part, ctx.features, self.query_fraction) if len(fit_part) else None
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
        K, D = int(self.n_basis), ctx.features.dim
        # Official init: nn.Linear(D, K, bias=False) (kaiming-uniform ⇒ U(±1/√D)), then randn(K).
        import torch

        g = ctx.torch_generator(offset=7)
        bound = 1.0 / math.sqrt(D)
        W_init = torch.empty(K, D).uniform_(-bound, bound, generator=g).numpy()
        w_init = torch.randn(K, generator=g).numpy()
        n_w = lay.n_active * K if self._per_user_training else K
        theta = np.empty(K * D + n_w, dtype=np.float32)
        theta[: K * D] = W_init.ravel()
        theta[K * D :] = np.tile(w_init, n_w // K)
        self.theta_ = theta
        self.W_ = theta[: K * D].reshape(K, D)
        self.w0_ = theta[K * D :] if not self._per_user_training else w_init.astype(np.float32)
        self.user_weights_fit_ = theta[K * D :].reshape(-1, K) if self._per_user_training else None

        val = self._validation_setup(fit_part, val_part) if val_part is not None else None
        with single_threaded_blas():
            self._train(lay, ctx, val)
        self.fit_seconds_ = time.perf_counter() - t0
        return self

    def _train(self, lay: _Layout, ctx: Context, val) -> None:
        K = int(self.n_basis)
        KD = self.W_.size
        theta = self.theta_
        W = self.W_
        grad = np.zeros_like(theta)
        gW = grad[:KD].reshape(W.shape)
        m = np.zeros_like(theta)
        v = np.zeros_like(theta)
        tmp = np.empty_like(theta)
        b1, b2 = ADAM_BETAS
        eps32 = np.float32(ADAM_EPS)
        scale = float(self.feature_scale)
        per_user = self._per_user_training
        split = not per_user
        steps_in = 0 if per_user else int(self.inner_steps)
        eps_hat = self.train_inner_adam == "higher-0.2.1"
        total = lay.n_active * int(self.epochs) // int(self.meta_batch)
        warm = int(total * self.warmup)
        rng = np.random.default_rng([int(ctx.seed), 0x4D524D])
        diff = lay.diff
        WT = W.T
        hbuf = np.empty((0, K), dtype=np.float32)
        gtmp = np.empty_like(W)
        t = 0
        self.epoch_losses_ = []
        self.epochs_run_ = 0
        self.best_epoch_ = None
        best = (-np.inf, None)
        since_best = 0
        for epoch in range(1, int(self.epochs) + 1):
            progress_step(epoch - 1, int(self.epochs), "epoch")
            plan = _Epoch(lay, rng, int(self.meta_batch), split)
            loss_sum = 0.0
            for j in range(plan.n_steps):
                p0, p1, _, ns, sup, qry, hidx = plan.step(j)
                # the batch's users' pair blocks are contiguous rows of ``diff``: project each
                # block in place (no gather), then pick the support/query entries in K dims
                users = plan.users[p0:p1]
                blocks = list(zip(lay.user_pstart[users].tolist(), lay.user_np[users].tolist()))
                nb = int(lay.user_np[users].sum())
                if hbuf.shape[0] < nb:
                    hbuf = np.empty((max(nb, 2 * hbuf.shape[0]), K), dtype=np.float32)
                o = 0
                for s0, n in blocks:
                    np.matmul(diff[s0 : s0 + n], WT, out=hbuf[o : o + n])
                    o += n
                H = hbuf[:nb].astype(np.float64)
                H *= scale
                h_s, h_q = hidx[:ns], hidx[ns:]
                if per_user:
                    w_start = theta[KD:].reshape(-1, K)[users].astype(np.float64)
                else:
                    w_start = theta[KD:].astype(np.float64)
                _, losses, wbar, ghs, ghq = meta_grads(
                    w_start, H[h_s], sup, H[h_q], qry,
                    steps_in, self.inner_optimizer, float(self.inner_lr),
                    self.objective, float(self.rho), float(self.gamma),
                    eps_hat=eps_hat,
                )
                loss_sum += float(losses.sum())
                G = np.zeros((nb, K))
                G[h_s] = ghs
                G[h_q] += ghq
                G *= scale
                G32 = G.astype(np.float32)
                o = 0
                for i, (s0, n) in enumerate(blocks):
                    np.matmul(G32[o : o + n].T, diff[s0 : s0 + n], out=gW if i == 0 else gtmp)
                    if i:
                        gW += gtmp
                    o += n
                if per_user:
                    grad[KD:] = 0.0
                    grad[KD:].reshape(-1, K)[users] = wbar
                else:
                    grad[KD:] = wbar
                if self.grad_clip is not None:
                    norm = math.sqrt(float(np.dot(grad, grad)))
                    coef = float(self.grad_clip) / (norm + 1e-6)
                    if coef < 1.0:
                        grad *= np.float32(coef)
                # torch.optim.Adam with the scheduled learning rate of this step
                lr = float(self.meta_lr) * cosine_lambda(t, warm, total)
                t += 1
                m *= b1
                np.multiply(grad, np.float32(1 - b1), out=tmp)
                m += tmp
                v *= b2
                np.multiply(grad, grad, out=tmp)
                tmp *= np.float32(1 - b2)
                v += tmp
                np.sqrt(v, out=tmp)
                tmp *= np.float32(1.0 / math.sqrt(1 - b2**t))
                tmp += eps32
                np.divide(m, tmp, out=tmp)
                tmp *= np.float32(lr / (1 - b1**t))
                theta -= tmp
            self.epoch_losses_.append(loss_sum / lay.n_active)
            self.epochs_run_ = epoch
            if per_user:
                self.w0_ = self._population_logits()
            if self.on_epoch is not None:
                self.on_epoch(epoch, self)
            if val is not None:
                score = self._validation_score(val)
                if score > best[0]:
                    best = (score, theta.copy())
                    self.best_epoch_ = epoch
                    since_best = 0
                else:
                    since_best += 1
                    if self.patience is not None and since_best >= self.patience:
                        break
        if val is not None and best[1] is not None:
            theta[...] = best[1]
            self.best_val_accuracy_ = float(best[0])
        if per_user:
            self.w0_ = self._population_logits()

    def _population_logits(self) -> np.ndarray:
        """mrm-no-meta: the starting logits for adaptation (overridden there)."""
        return self.w0_

    # ------------------------------------------------------------------ validation (early stopping)
    def _validation_setup(self, fit_part: UserPairs, val_part: UserPairs) -> dict | None:
        if len(val_part) == 0:
            return None
        f = self.ctx_.features
        vu = np.unique(val_part.user)
        sup = fit_part.for_users(np.isin(np.arange(fit_part.n_users), vu))
        return {
            "sup": sup,
            "sup_diff": f.diff(sup.chosen, sup.rejected),
            "val": val_part,
            "val_diff": f.diff(val_part.chosen, val_part.rejected),
        }

    def _validation_score(self, val: dict) -> float:
        """Macro accuracy over validation users, each adapted on its fit pairs (ties wrong)."""
        scale = float(self.feature_scale)
        hs = (val["sup_diff"] @ self.W_.T).astype(np.float64) * scale
        uw = self._adapt_logits(val["sup"], hs)
        hv = (val["val_diff"] @ self.W_.T).astype(np.float64) * scale
        vp = val["val"]
        margin = np.einsum("nk,nk->n", softmax(uw[vp.user]), hv)
        n = np.bincount(vp.user, minlength=vp.n_users)
        correct = np.bincount(vp.user, weights=(margin > 0).astype(np.float64), minlength=vp.n_users)
        has = n > 0
        return float((correct[has] / n[has]).mean())

    # ------------------------------------------------------------------ adapt / score
    def _eval_steps(self) -> tuple[int, str, float]:
        return int(self.eval_inner_steps), self.inner_optimizer, float(self.inner_lr)

    def _adapt_logits(self, support: UserPairs, hs: np.ndarray) -> np.ndarray:
        """Every user's logits after the evaluation inner loop from w0 on its support (U × K)."""
        K = int(self.n_basis)
        counts = support.counts()
        w0 = np.asarray(self.w0_, dtype=np.float64)
        out = np.tile(w0, (support.n_users, 1))
        steps, opt, lr = self._eval_steps()
        has = counts > 0
        if steps == 0 or not has.any():
            return out
        w, _ = inner_loop(np.tile(w0, (int(has.sum()), 1)), hs, *segments(counts[has]), steps, opt, lr)
        out[has] = w
        assert out.shape[1] == K
        return out

    def adapt(self, support: UserPairs) -> "MRM":
        f = self.ctx_.features
        if len(support):
            rows, inv = np.unique(np.r_[support.chosen, support.rejected], return_inverse=True)
            P = f.project(self.W_.T, rows)
            n = len(support)
            hs = (P[inv[:n]] - P[inv[n:]]).astype(np.float64) * float(self.feature_scale)
        else:
            hs = np.zeros((0, int(self.n_basis)))
        self.user_w_ = self._adapt_logits(support, hs)
        self.adapted_ = (support.counts() > 0) & (self._eval_steps()[0] > 0)
        return self

    def score(self, queries: Queries) -> np.ndarray:
        rows, ia, ib = unique_rows(queries)
        P = self.ctx_.features.project(self.W_.T, rows)
        h = (P[ia] - P[ib]).astype(np.float64) * float(self.feature_scale)
        return np.einsum("nk,nk->n", softmax(self.user_w_[queries.user]), h)

    # ------------------------------------------------------------------ reporting
    def _per_user_params(self) -> int:
        return int(self.n_basis) if int(self.eval_inner_steps) > 0 else 0

    def param_count(self) -> ParamCount:
        K, D = int(self.n_basis), self.ctx_.features.dim
        return ParamCount(shared=K * D + K, per_user=self._per_user_params())

    def trained_param_count(self) -> ParamCount:
        shared = count_tensors(self.W_, self.w0_)
        per_user = self.user_w_.shape[1] if getattr(self, "user_w_", None) is not None and self._per_user_params() else 0
        return ParamCount(shared=shared, per_user=per_user)

    def extra_rows(self) -> dict[str, np.ndarray]:
        return {"adapted": np.asarray(self.adapted_, dtype=bool)} if hasattr(self, "adapted_") else {}

    def extra_meta(self) -> dict[str, Any]:
        meta: dict[str, Any] = {
            "epochs_run": int(getattr(self, "epochs_run_", 0)),
            "epoch_query_loss": [round(float(x), 6) for x in getattr(self, "epoch_losses_", [])],
            "seen_users_without_train_pairs": int(getattr(self, "seen_without_pairs_", 0)),
        }
        if getattr(self, "best_epoch_", None) is not None:
            meta["best_epoch"] = int(self.best_epoch_)
            meta["best_val_accuracy"] = float(self.best_val_accuracy_)
        if hasattr(self, "adapted_"):
            meta["users_not_adapted"] = int((~self.adapted_).sum())
        return meta

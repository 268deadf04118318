"""MRM: hand-derived meta-gradients against finite differences and an autograd reference of the
official model, the RPO objective, the training loop against torch's optimiser stack, the
evaluation, behaviour on toy users, the ablations and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest

import bench.methods.mrm as mrm_mod
from bench.api import Context, Queries, UserPairs
from bench.data import DatasetInfo, Features
from bench.errors import BenchError
from bench.methods.bt import BT
from bench.methods.mrm import (
    MRM,
    _Epoch,
    _Layout,
    combine_losses,
    cosine_lambda,
    inner_loop,
    meta_grads,
    segments,
    softmax,
)
from bench.methods.mrm_ablations import MRMNoAdapt, MRMNoBasis, MRMNoMeta, MRMNoRPO

torch = pytest.importorskip("torch")


# ============================================================================ a tiny meta-batch


def _batch(seed=0, B=3, K=2, D=6, n_s=(2, 1, 3), n_q=(4, 3, 5), scale=0.5):
    """Response features of B users' supports and queries, and a random (W, w0)."""
    rng = np.random.default_rng(seed)
    users = []
    for b in range(B):
        users.append(tuple(rng.standard_normal((n, D)) for n in (n_s[b], n_s[b], n_q[b], n_q[b])))
    W = rng.standard_normal((K, D)) * 0.7
    w0 = rng.standard_normal(K)
    return users, W, w0, scale


def _ours(users, W, w0, scale, steps, optimizer, lr, objective, rho, gamma, fast=True, eps_hat=False):
    """Objective and (∂/∂W, ∂/∂w0) through the hand-derived path."""
    Ds = np.concatenate([sc - sr for sc, sr, _, _ in users])
    Dq = np.concatenate([qc - qr for _, _, qc, qr in users])
    sup = segments(np.array([len(u[0]) for u in users]))
    qry = segments(np.array([len(u[2]) for u in users]))
    hs, hq = scale * Ds @ W.T, scale * Dq @ W.T
    obj, losses, wbar, ghs, ghq = meta_grads(
        w0, hs, sup, hq, qry, steps, optimizer, lr, objective, rho, gamma, fast=fast, eps_hat=eps_hat
    )
    gW = scale * (ghs.T @ Ds + ghq.T @ Dq)
    return obj, losses, gW, wbar


def _reference(users, W, w0, scale, steps, optimizer, lr, objective, rho, gamma, eps=1e-8, higher_021=False):
    """The official model written directly with autograd, as train.py + higher run it: rewards
    of chosen and rejected responses, mean BT loss, the inner step differentiated through
    (create_graph=True, higher's DifferentiableAdam update — that of its master branch, equal to
    torch.optim.Adam, or with ``higher_021`` that of the released 0.2.1), RPO with
    torch.quantile."""
    import torch.nn.functional as F

    Wt = torch.tensor(W, requires_grad=True)
    w0t = torch.tensor(w0, requires_grad=True)

    def reward(w, X):
        return ((torch.tensor(X) * scale) @ Wt.T * torch.softmax(w, -1)).sum(-1)

    b1, b2 = 0.9, 0.999
    losses = []
    for sc, sr, qc, qr in users:
        w, m, v = w0t, None, None
        for t in range(1, steps + 1):
            loss = -F.logsigmoid(reward(w, sc) - reward(w, sr)).mean()
            (g,) = torch.autograd.grad(loss, w, create_graph=True)
            if optimizer == "sgd":
                w = w - lr * g
                continue
            m = (1 - b1) * g if m is None else b1 * m + (1 - b1) * g
            v = (1 - b2) * g * g if v is None else b2 * v + (1 - b2) * g * g
            if higher_021:  # higher 0.2.1: denom = √v + ε, step = lr·√bc2/bc1
                w = w - lr * math.sqrt(1 - b2**t) / (1 - b1**t) * m / (v.sqrt() + eps)
            else:
                den = v.sqrt() / math.sqrt(1 - b2**t) + eps
                w = w - lr / (1 - b1**t) * m / den
        losses.append(-F.logsigmoid(reward(w, qc) - reward(w, qr)).mean())
    L = torch.stack(losses)
    if objective == "sum":
        obj = L.sum()
    else:
        tau = torch.quantile(L, 1 - rho)
        if gamma == 0:
            obj = ((L > tau).double().detach() * L).sum()
        else:
            obj = (torch.sigmoid((L - tau) / gamma) * L).sum()
    obj.backward()
    return obj.item(), L.detach().numpy(), Wt.grad.numpy(), w0t.grad.numpy()


CASES = [
    # steps, optimizer, lr, objective, rho, gamma, eps_hat (higher 0.2.1's Adam ε)
    (1, "adam", 0.05, "rpo", 0.5, 0.5, False),
    (1, "adam", 0.05, "rpo", 0.5, 0.5, True),
    (1, "sgd", 0.3, "rpo", 0.5, 0.5, False),
    (1, "adam", 0.05, "rpo", 0.5, 0.0, True),
    (1, "sgd", 0.3, "sum", 0.5, 0.5, False),
    (1, "adam", 0.05, "rpo", 1.0, 0.2, False),
    (2, "adam", 0.05, "rpo", 0.2, 0.5, False),
    (3, "adam", 0.05, "rpo", 0.5, 0.5, True),
    (3, "sgd", 0.3, "rpo", 0.5, 0.5, False),
    (0, "adam", 0.05, "rpo", 0.5, 0.5, False),
]


@pytest.mark.parametrize("steps,optimizer,lr,objective,rho,gamma,eps_hat", CASES)
def test_meta_gradient_matches_autograd_reference(steps, optimizer, lr, objective, rho, gamma, eps_hat):
    users, W, w0, scale = _batch()
    obj, losses, gW, gw0 = _ours(users, W, w0, scale, steps, optimizer, lr, objective, rho, gamma, eps_hat=eps_hat)
    r_obj, r_losses, r_gW, r_gw0 = _reference(
        users, W, w0, scale, steps, optimizer, lr, objective, rho, gamma, higher_021=eps_hat
    )
    np.testing.assert_allclose(losses, r_losses, rtol=1e-12)
    assert obj == pytest.approx(r_obj, rel=1e-12)
    np.testing.assert_allclose(gW, r_gW, rtol=1e-9, atol=1e-13)
    np.testing.assert_allclose(gw0, r_gw0, rtol=1e-9, atol=1e-13)


@pytest.mark.parametrize("eps", [1e-8, 0.05])
@pytest.mark.parametrize("steps,optimizer,lr,objective,rho,gamma,eps_hat", CASES)
def test_meta_gradient_matches_finite_differences(monkeypatch, eps, steps, optimizer, lr, objective, rho, gamma, eps_hat):
    """Central differences in float64. A large Adam ε makes the second-order term of the Adam
    step (lr·ε/(|g|+ε)², negligible at ε = 1e-8) carry weight, so it is checked too."""
    monkeypatch.setattr(mrm_mod, "ADAM_EPS", eps)
    users, W, w0, scale = _batch(seed=1)
    _, _, gW, gw0 = _ours(users, W, w0, scale, steps, optimizer, lr, objective, rho, gamma, eps_hat=eps_hat)
    if eps != 1e-8 and optimizer == "adam":
        # the reference with the same ε agrees as well
        _, _, r_gW, r_gw0 = _reference(
            users, W, w0, scale, steps, optimizer, lr, objective, rho, gamma, eps=eps, higher_021=eps_hat
        )
        np.testing.assert_allclose(gW, r_gW, rtol=1e-9, atol=1e-13)

    def f(Wx, wx):
        return _ours(users, Wx, wx, scale, steps, optimizer, lr, objective, rho, gamma, eps_hat=eps_hat)[0]

    h = 1e-6
    num_W = np.zeros_like(W)
    for idx in np.ndindex(W.shape):
        d = np.zeros_like(W)
        d[idx] = h
        num_W[idx] = (f(W + d, w0) - f(W - d, w0)) / (2 * h)
    num_w0 = np.array([(f(W, w0 + h * e) - f(W, w0 - h * e)) / (2 * h) for e in np.eye(len(w0))])
    np.testing.assert_allclose(gW, num_W, rtol=2e-5, atol=1e-8)
    np.testing.assert_allclose(gw0, num_w0, rtol=2e-5, atol=1e-8)


def test_fast_path_equals_general_path_and_second_order_term_is_real(monkeypatch):
    users, W, w0, scale = _batch(seed=2)
    for opt, eps_hat in (("adam", False), ("adam", True), ("sgd", False)):
        a = _ours(users, W, w0, scale, 1, opt, 0.05, "rpo", 0.5, 0.5, fast=True, eps_hat=eps_hat)
        b = _ours(users, W, w0, scale, 1, opt, 0.05, "rpo", 0.5, 0.5, fast=False, eps_hat=eps_hat)
        np.testing.assert_allclose(a[2], b[2], rtol=1e-10, atol=1e-15)
        np.testing.assert_allclose(a[3], b[3], rtol=1e-10, atol=1e-15)
    # with a large ε the Adam step is not sign-like and its derivative changes the gradient
    monkeypatch.setattr(mrm_mod, "ADAM_EPS", 0.05)
    second = _ours(users, W, w0, scale, 1, "adam", 0.05, "rpo", 0.5, 0.5)[2]
    monkeypatch.setattr(mrm_mod, "ADAM_EPS", 1e-8)
    first = _ours(users, W, w0, scale, 1, "adam", 0.05, "rpo", 0.5, 0.5)[2]
    assert np.abs(second - first).max() > 1e-4 * np.abs(first).max()


def test_higher_021_adam_adds_eps_before_bias_correction():
    """The official requirements pin higher==0.2.1, whose DifferentiableAdam divides by √v + ε
    and scales the step by √bc2: the first step is lr·g/(|g| + ε/√(1 − β2)), not lr·g/(|g| + ε)."""
    from bench.methods.mrm import adam_eps

    assert adam_eps(1, True) == pytest.approx(1e-8 / math.sqrt(0.001))
    assert adam_eps(1, False) == 1e-8
    rng = np.random.default_rng(4)
    hs = rng.standard_normal((4, 2)) * 1e-6  # tiny gradients, where the two ε differ
    seg = segments(np.array([4]))
    w_t, _ = inner_loop(np.zeros((1, 2)), hs, *seg, 1, "adam", 1e-3)
    w_h, _ = inner_loop(np.zeros((1, 2)), hs, *seg, 1, "adam", 1e-3, eps_hat=True)
    g = np.abs(w_t[0]) / 1e-3 * 1e-8 / (1 - np.abs(w_t[0]) / 1e-3)  # |g| recovered from the torch step
    np.testing.assert_allclose(np.abs(w_h[0]), 1e-3 * g / (g + 1e-8 / math.sqrt(0.001)), rtol=1e-6)
    # MRM trains with higher 0.2.1's step by default and evaluates with torch.optim.Adam's
    assert MRM().train_inner_adam == "higher-0.2.1"


def test_first_adam_step_moves_each_logit_by_about_lr():
    rng = np.random.default_rng(3)
    hs = rng.standard_normal((5, 2))
    w, _ = inner_loop(np.zeros((1, 2)), hs, *segments(np.array([5])), 1, "adam", 1e-3)
    np.testing.assert_allclose(np.abs(w), 1e-3, rtol=1e-4)
    # and it is the official torch.optim.Adam step
    wt = torch.zeros(2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([wt], lr=1e-3)
    h = torch.tensor(hs)
    loss = torch.nn.functional.softplus(-(h * torch.softmax(wt, -1)).sum(-1)).mean()
    loss.backward()
    opt.step()
    np.testing.assert_allclose(w[0], wt.detach().numpy(), rtol=1e-10)


# ============================================================================ RPO


def test_rpo_by_hand():
    L = np.array([0.9, 0.5, 0.7, 0.3])
    # rho = 0.5 → τ = quantile(L, 0.5) = 0.6 (linear between 0.5 and 0.7)
    obj, grad, info = combine_losses(L, "rpo", 0.5, 0.5)
    assert info["tau"] == pytest.approx(0.6)
    w = 1 / (1 + np.exp(-(L - 0.6) / 0.5))
    np.testing.assert_allclose(info["weights"], w)
    assert obj == pytest.approx(float((w * L).sum()))
    # torch agrees on τ and on the gradient (τ and the weights are differentiated)
    Lt = torch.tensor(L, requires_grad=True)
    tau = torch.quantile(Lt, 0.5)
    (torch.sigmoid((Lt - tau) / 0.5) * Lt).sum().backward()
    np.testing.assert_allclose(grad, Lt.grad.numpy(), rtol=1e-12)
    # rho = 0.2 → τ = quantile(L, 0.8) = 0.3 + ... position 2.4 of the sorted losses
    _, _, info = combine_losses(L, "rpo", 0.2, 0.5)
    assert info["tau"] == pytest.approx(0.7 + 0.4 * 0.2)


def test_rpo_gamma_zero_is_hard_filtering():
    L = np.array([0.9, 0.5, 0.7, 0.3])
    obj, grad, info = combine_losses(L, "rpo", 0.5, 0.0)
    np.testing.assert_array_equal(grad, [1, 0, 1, 0])
    assert obj == pytest.approx(0.9 + 0.7)
    # two users, rho = 0.5: only the harder user counts
    obj, grad, _ = combine_losses(np.array([0.4, 0.8]), "rpo", 0.5, 0.0)
    assert obj == pytest.approx(0.8) and list(grad) == [0, 1]
    # γ → 0 approaches hard weights in value (not in gradient scale, as the paper notes)
    obj_small, _, info = combine_losses(L, "rpo", 0.5, 1e-6)
    np.testing.assert_allclose(info["weights"], [1, 0, 1, 0], atol=1e-12)
    # a single user (an odd last meta-batch): τ = L, σ(0) = ½ soft, nothing kept hard
    assert combine_losses(np.array([0.6]), "rpo", 0.5, 0.5)[0] == pytest.approx(0.3)
    assert combine_losses(np.array([0.6]), "rpo", 0.5, 0.0)[0] == 0.0


def test_cosine_schedule_matches_transformers_formula():
    assert cosine_lambda(0, 10, 100) == 0.0
    assert cosine_lambda(5, 10, 100) == 0.5
    assert cosine_lambda(10, 10, 100) == 1.0
    assert cosine_lambda(55, 10, 100) == pytest.approx(0.5)
    assert cosine_lambda(100, 10, 100) == pytest.approx(0.0, abs=1e-12)
    assert cosine_lambda(0, 0, 100) == 1.0


# ============================================================================ epochs and training


def _tiny_pairs(n_users=9, seed=0, groups=(1, 2, 3, 5, 12), D=8):
    """UserPairs with a chosen number of groups per user (1–3 pairs per group)."""
    rng = np.random.default_rng(seed)
    user, group, ch, rj = [], [], [], []
    g = 0
    for u in range(n_users):
        for _ in range(groups[u % len(groups)]):
            for _ in range(rng.integers(1, 4)):
                user.append(u)
                group.append(g)
                ch.append(len(ch) * 2)
                rj.append(len(rj) * 2 + 1)
            g += 1
    n = len(user)
    X = rng.standard_normal((2 * n, D)).astype(np.float16)
    users = np.array([f"u{i}" for i in range(n_users)])
    pairs = UserPairs(users, np.ones(n_users, bool), np.array(user), np.array(group), np.array(ch), np.array(rj), np.arange(n), seed)
    info = DatasetInfo("tiny", "generic", "group", D, frozenset({"features"}), n_users, n)
    return pairs, Context(info=info, features=Features(X), seed=seed)


def test_epoch_resplit_semantics():
    pairs, ctx = _tiny_pairs()
    lay = _Layout(pairs, ctx.features, 0.9)
    rng = np.random.default_rng(0)
    seen_supports = []
    for _ in range(3):
        ep = _Epoch(lay, rng, 2, split=True)
        assert sorted(ep.users) == list(range(lay.n_active))  # every user once
        assert ep.n_steps == 5  # 9 users, batches of 2, the last one alone
        sup_sets = {}
        for j in range(ep.n_steps):
            p0, p1, rows, ns, sup, qry, _ = ep.step(j)
            assert p1 - p0 == (2 if j < 4 else 1)
            for b in range(p1 - p0):
                u = ep.users[p0 + b]
                s_rows = rows[:ns][sup[0] == b]
                q_rows = rows[ns:][qry[0] == b]
                assert np.all(lay.pair_user[s_rows] == u) and np.all(lay.pair_user[q_rows] == u)
                s_g, q_g = set(lay.pair_group[s_rows]), set(lay.pair_group[q_rows])
                ng = lay.user_ng[u]
                assert len(q_g) == max(1, int(ng * 0.9))  # query = ⌊0.9·n⌋ groups (at least one)
                if ng == 1:
                    assert s_g == q_g  # one group: support = query
                else:
                    assert s_g.isdisjoint(q_g) and len(s_g) + len(q_g) == ng
                # whole groups only, every pair of a group together
                assert len(s_rows) + len(q_rows) == (lay.pair_user == u).sum() * (2 if ng == 1 else 1)
                sup_sets[u] = frozenset(s_g)
        seen_supports.append(sup_sets)
    # the re-split changes between epochs for users with several groups
    many = [u for u in range(lay.n_active) if lay.user_ng[u] >= 5]
    assert any(len({s[u] for s in seen_supports}) > 1 for u in many)


def test_training_loop_matches_torch_optimiser_stack():
    """Two epochs of MRM.fit against the same steps run with torch autograd (the official
    model), torch.optim.Adam, clip_grad_norm_ and LambdaLR with the transformers schedule."""
    import torch.nn.functional as F

    pairs, ctx = _tiny_pairs(n_users=7, seed=4)
    params = dict(epochs=2, meta_lr=0.05, inner_lr=0.05, grad_clip=0.05, warmup=0.2, feature_scale=1.0)
    ours = MRM(**params).fit(pairs, ctx)

    lay = _Layout(pairs, ctx.features, 0.9)
    g = ctx.torch_generator(offset=7)
    D = ctx.features.dim
    W = torch.empty(2, D).uniform_(-1 / math.sqrt(D), 1 / math.sqrt(D), generator=g).requires_grad_()
    w0 = torch.randn(2, generator=g).requires_grad_()
    opt = torch.optim.Adam([W, w0], lr=0.05)
    total = lay.n_active * 2 // 2
    warm = int(total * 0.2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_lambda(s, warm, total))
    rng = np.random.default_rng([ctx.seed, 0x4D524D])
    X = torch.from_numpy(ctx.features.take(np.arange(ctx.features.n_rows)))
    tr_c, tr_r = pairs.chosen[lay.pair_index], pairs.rejected[lay.pair_index]

    def reward(w, rows):
        return (X[rows] @ W.T * torch.softmax(w, -1)).sum(-1)

    for _ in range(2):
        ep = _Epoch(lay, rng, 2, split=True)
        for j in range(ep.n_steps):
            p0, p1, rows, ns, sup, qry, _ = ep.step(j)
            losses = []
            for b in range(p1 - p0):
                s, q = rows[:ns][sup[0] == b], rows[ns:][qry[0] == b]
                ls = -F.logsigmoid(reward(w0, tr_c[s]) - reward(w0, tr_r[s])).mean()
                (gr,) = torch.autograd.grad(ls, w0, create_graph=True)
                w = w0 - 0.05 * gr / (gr.abs() + 1e-8 / math.sqrt(1 - 0.999))  # higher 0.2.1's ε
                losses.append(-F.logsigmoid(reward(w, tr_c[q]) - reward(w, tr_r[q])).mean())
            L = torch.stack(losses)
            obj = (torch.sigmoid((L - torch.quantile(L, 0.5)) / 0.5) * L).sum()
            opt.zero_grad()
            obj.backward()
            torch.nn.utils.clip_grad_norm_([W, w0], 0.05)
            opt.step()
            sched.step()
    np.testing.assert_allclose(ours.W_, W.detach().numpy(), rtol=2e-4, atol=2e-6)
    np.testing.assert_allclose(ours.w0_, w0.detach().numpy(), rtol=2e-4, atol=2e-6)


def test_evaluation_is_official_one_step_adam_per_user():
    pairs, ctx = _tiny_pairs(n_users=6, seed=5)
    m = MRM(epochs=1, inner_lr=0.01).fit(pairs, ctx)
    m.adapt(pairs)
    X = torch.from_numpy(ctx.features.take(np.arange(ctx.features.n_rows)).astype(np.float64))
    W = torch.from_numpy(m.W_.astype(np.float64))
    off = pairs.offsets()
    for u in range(pairs.n_users):
        w = torch.tensor(m.w0_.astype(np.float64), requires_grad=True)
        opt = torch.optim.Adam([w], lr=0.01)
        sl = slice(off[u], off[u + 1])

        def r(rows):
            return ((X[rows] * 0.01) @ W.T * torch.softmax(w, -1)).sum(-1)

        torch.nn.functional.softplus(-(r(pairs.chosen[sl]) - r(pairs.rejected[sl]))).mean().backward()
        opt.step()
        np.testing.assert_allclose(m.user_w_[u], w.detach().numpy(), rtol=1e-6, atol=1e-9)


# ============================================================================ behaviour


def _toy(seed=0, U=60, n_train=12, n_test=40, D=8, hetero=True):
    """Users who prefer +e1 or −e1 (alternating), all slightly e2; Bradley–Terry labels."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((U * (n_train + n_test) * 2, D)).astype(np.float16)
    sign = np.where(np.arange(U) % 2 == 0, 1.0, -1.0) if hetero else np.ones(U)
    theta = np.zeros((U, D))
    theta[:, 0] = 2.0 * sign
    theta[:, 1] = 0.5
    rows = np.arange(len(X)).reshape(U, n_train + n_test, 2)
    ra, rb = rows[..., 0], rows[..., 1]
    util = np.einsum("upd,ud->up", X[ra].astype(float) - X[rb].astype(float), theta)
    a_wins = rng.random(util.shape) < 1 / (1 + np.exp(-util))
    ch, rj = np.where(a_wins, ra, rb), np.where(a_wins, rb, ra)
    users = np.array([f"u{i:03d}" for i in range(U)])
    seen = np.arange(U) < U // 2
    uid = np.repeat(np.arange(U), n_train)
    tr = UserPairs(users, seen, uid, np.arange(len(uid)), ch[:, :n_train].ravel(), rj[:, :n_train].ravel(), np.arange(len(uid)), seed)
    qu = np.repeat(np.arange(U), n_test)
    q = Queries(users, seen, qu, np.arange(len(qu)), ch[:, n_train:].ravel(), rj[:, n_train:].ravel(), np.arange(len(qu)))
    info = DatasetInfo("toy", "generic", "group", D, frozenset({"features"}), U, len(uid))
    return tr, q, Context(info=info, features=Features(X), seed=seed)


def _toy_acc(method, tr, q, ctx):
    method.fit(tr.for_users(tr.seen), ctx)
    method.adapt(tr)
    return float(np.mean(method.score(q) > 0))


TOY = dict(epochs=100, inner_lr=0.5, meta_lr=1e-2, feature_scale=1.0)


def test_mrm_beats_bt_on_users_who_differ_and_matches_it_on_homogeneous_users():
    for seed in range(2):
        tr, q, ctx = _toy(seed, hetero=True)
        bt = _toy_acc(BT(iterations=300, logit_scale=1.0, lr=0.05), tr, q, ctx)
        mrm = _toy_acc(MRM(**TOY), tr, q, ctx)
        no_adapt = _toy_acc(MRMNoAdapt(epochs=100, meta_lr=1e-2, feature_scale=1.0), tr, q, ctx)
        assert mrm > bt + 0.1 and mrm > no_adapt + 0.1, (mrm, bt, no_adapt)
        tr, q, ctx = _toy(seed, hetero=False)
        bt = _toy_acc(BT(iterations=300, logit_scale=1.0, lr=0.05), tr, q, ctx)
        mrm = _toy_acc(MRM(**TOY), tr, q, ctx)
        # 2,400 test pairs: a binomial standard error of about 0.008
        assert mrm > bt - 0.025, (mrm, bt)


def test_same_seed_same_result_and_seed_matters():
    tr, q, ctx = _toy(0, U=20)
    a = MRM(epochs=3).fit(tr.for_users(tr.seen), ctx).adapt(tr).score(q)
    b = MRM(epochs=3).fit(tr.for_users(tr.seen), ctx).adapt(tr).score(q)
    np.testing.assert_array_equal(a, b)
    ctx1 = Context(info=ctx.info, features=ctx.features, seed=1)
    c = MRM(epochs=3).fit(tr.for_users(tr.seen), ctx1).adapt(tr).score(q)
    assert not np.array_equal(a, c)


# ============================================================================ ablations


def test_each_ablation_changes_the_computation(monkeypatch):
    tr, q, ctx = _toy(0, U=20)
    seen = tr.for_users(tr.seen)
    base = MRM(epochs=3, inner_lr=0.05)
    ref = base.fit(seen, ctx).adapt(tr).score(q)
    calls = []
    real = mrm_mod.combine_losses
    monkeypatch.setattr(mrm_mod, "combine_losses", lambda L, obj, *a: calls.append(obj) or real(L, obj, *a))
    no_rpo = MRMNoRPO(epochs=3, inner_lr=0.05).fit(seen, ctx).adapt(tr)
    assert set(calls) == {"sum"} and "objective" not in MRMNoRPO.param_names()
    assert not np.allclose(no_rpo.score(q), ref)
    calls.clear()
    base.fit(seen, ctx)
    assert set(calls) == {"rpo"}
    monkeypatch.setattr(mrm_mod, "combine_losses", real)

    no_adapt = MRMNoAdapt(epochs=3).fit(seen, ctx).adapt(tr)
    assert np.all(no_adapt.user_w_ == no_adapt.w0_)  # nobody moves from w0
    assert not np.allclose(no_adapt.score(q), ref)
    assert no_adapt.param_count().per_user == 0

    no_meta = MRMNoMeta(epochs=3, adapt_steps=10).fit(seen, ctx)
    assert no_meta.user_weights_fit_.shape == (tr.seen.sum(), 2)  # each seen user its own logits
    assert len({tuple(r) for r in no_meta.user_weights_fit_}) == tr.seen.sum()
    np.testing.assert_allclose(no_meta.w0_, no_meta.user_weights_fit_.mean(axis=0), rtol=1e-6)
    assert not np.allclose(no_meta.adapt(tr).score(q), ref)

    no_basis = MRMNoBasis(epochs=1, hidden=3).fit(seen, ctx).adapt(tr)
    assert [tuple(p.shape) for p in no_basis.params_] == [(3, 8), (3,), (3,)]
    assert not np.allclose(no_basis.score(q), ref)


def test_no_basis_adapts_every_weight_per_user():
    tr, q, ctx = _toy(1, U=12)
    m = MRMNoBasis(epochs=1, hidden=3, inner_lr=0.05).fit(tr.for_users(tr.seen), ctx).adapt(tr)
    adapted = m.score(q)
    m.eval_inner_steps = 0
    unadapted = m.score(q)
    assert not np.allclose(adapted, unadapted)
    # users without support keep the meta-learned weights
    empty = tr.for_users(np.zeros(tr.n_users, bool))
    m.eval_inner_steps = 1
    m.adapt(empty)
    np.testing.assert_allclose(m.score(q), unadapted, rtol=1e-6)


def test_ablation_configs_follow_mrm_learning_rates():
    from bench.config import method_config

    base = method_config("mrm")
    assert base["families"]["prism"] == {"inner_lr": 1e-3, "meta_lr": 1e-3}
    assert base["families"]["reddit"] == {"inner_lr": 5e-3, "meta_lr": 5e-3}
    for cls in (MRMNoRPO, MRMNoAdapt, MRMNoMeta, MRMNoBasis):
        fam = method_config(cls.name)["families"]
        for family in ("prism", "reddit"):
            for key, value in base["families"][family].items():
                if key in cls.param_names():
                    assert fam[family][key] == value, (cls.name, family, key)


# ============================================================================ parameters and the hook


def test_fixed_parameter_names_and_defaults():
    d = MRM.default_params()
    expected = dict(n_basis=2, feature_scale=0.01, epochs=200, meta_batch=2, inner_steps=1, eval_inner_steps=1,
                    inner_optimizer="adam", objective="rpo", rho=0.5, gamma=0.5, query_fraction=0.9,
                    warmup=0.05, grad_clip=1.0, early_stopping=False)
    for k, v in expected.items():
        assert d[k] == v, k
    assert {"inner_lr", "meta_lr", "val_fraction", "patience"} <= set(d)
    assert "on_epoch" not in d


def test_on_epoch_hook_sees_a_usable_state():
    tr, q, ctx = _toy(0, U=16)
    seen_states = []

    def hook(epoch, m):
        m.adapt(tr)
        seen_states.append((epoch, m.W_.copy(), m.score(q)))

    m = MRM(epochs=3, inner_lr=0.05)
    m.on_epoch = hook
    m.fit(tr.for_users(tr.seen), ctx)
    assert [e for e, _, _ in seen_states] == [1, 2, 3]
    assert not np.allclose(seen_states[0][1], seen_states[2][1])
    final = m.adapt(tr).score(q)
    np.testing.assert_allclose(final, seen_states[-1][2])


def test_early_stopping_uses_a_carve_out_of_train_groups_only():
    tr, q, ctx = _toy(0, U=20, n_train=20)
    seen = tr.for_users(tr.seen)
    m = MRM(epochs=30, early_stopping=True, patience=3, val_fraction=0.2, inner_lr=0.05)
    m.fit(seen, ctx)
    meta = m.extra_meta()
    assert 1 <= meta["best_epoch"] <= meta["epochs_run"] <= 30
    assert 0.0 <= meta["best_val_accuracy"] <= 1.0
    # patience ends training early once the validation accuracy stalls
    assert meta["epochs_run"] - meta["best_epoch"] <= 3
    # without early stopping every epoch runs
    assert MRM(epochs=5).fit(seen, ctx).extra_meta()["epochs_run"] == 5


# ============================================================================ bad input


def test_bad_parameters_are_clear_errors():
    pairs, ctx = _tiny_pairs()
    for kw, word in [
        ({"rho": 0.0}, "rho"),
        ({"rho": 1.5}, "rho"),
        ({"gamma": -0.1}, "gamma"),
        ({"meta_batch": 0}, "meta_batch"),
        ({"inner_optimizer": "rmsprop"}, "inner_optimizer"),
        ({"objective": "mean"}, "objective"),
        ({"query_fraction": 1.0}, "query_fraction"),
        ({"n_basis": 0}, "n_basis"),
        ({"epochs": -1}, "epochs"),
    ]:
        with pytest.raises(BenchError, match=word) as e:
            MRM(**kw).fit(pairs, ctx)
        assert e.value.hint


def test_meta_batch_larger_than_seen_users_is_an_error():
    pairs, ctx = _tiny_pairs(n_users=5)
    with pytest.raises(BenchError, match="meta_batch=8 is larger than the 5 seen users"):
        MRM(meta_batch=8, epochs=1).fit(pairs, ctx)
    MRM(meta_batch=5, epochs=1).fit(pairs, ctx)  # exactly all users is fine


def test_single_group_users_train_with_support_equal_to_query():
    pairs, ctx = _tiny_pairs(n_users=6, groups=(1,))
    m = MRM(epochs=2).fit(pairs, ctx).adapt(pairs)
    assert np.isfinite(m.W_).all() and np.isfinite(m.user_w_).all()


def test_users_without_pairs_are_reported_not_crashed_on():
    pairs, ctx = _tiny_pairs(n_users=8)
    # seen user 3 has no train pair within the budget; unseen users 6, 7 have no support
    keep = ~np.isin(pairs.user, [3])
    m = MRM(epochs=2).fit(pairs.subset(keep), ctx)
    assert m.extra_meta()["seen_users_without_train_pairs"] == 1
    support = pairs.subset(~np.isin(pairs.user, [6, 7]))
    m.adapt(support)
    np.testing.assert_array_equal(m.extra_rows()["adapted"], ~np.isin(np.arange(8), [6, 7]))
    np.testing.assert_allclose(m.user_w_[[6, 7]], np.tile(m.w0_, (2, 1)))
    assert m.extra_meta()["users_not_adapted"] == 2
    # no seen user with a pair at all
    with pytest.raises(BenchError, match="no training pairs"):
        MRM(epochs=1).fit(pairs.subset(np.zeros(len(pairs), bool)), ctx)


def test_parameter_count_formula():
    pairs, ctx = _tiny_pairs(D=8)
    m = MRM(epochs=1, n_basis=3).fit(pairs, ctx).adapt(pairs)
    assert m.param_count().shared == 3 * 8 + 3 and m.param_count().per_user == 3
    assert m.trained_param_count() == m.param_count()


def test_no_basis_meta_gradient_matches_finite_differences():
    """The MLP ablation's second-order meta-gradient (torch autograd through the expanded
    per-user weights and the inner Adam step) against central differences, in float64."""
    m = MRMNoBasis(hidden=3, inner_lr=0.05)
    rng = np.random.default_rng(0)
    B, n_s, n_q, D = 2, 3, 4, 5
    T = lambda *s: torch.tensor(rng.standard_normal(s))
    Sc, Sr, Qc, Qr = T(B, n_s, D), T(B, n_s, D), T(B, n_q, D), T(B, n_q, D)
    Sw = torch.full((B, n_s), 1.0 / n_s)
    Sw[1, 2] = 0.0  # a padded row
    Sw[1, :2] = 0.5
    Qw = torch.full((B, n_q), 1.0 / n_q)
    base = [T(3, D) * 0.5, T(3) * 0.5, T(3)]

    def objective(params):
        expanded = tuple(p.unsqueeze(0).expand(B, *p.shape) for p in params)
        adapted = m._inner(expanded, Sc, Sr, Sw, 1, create_graph=True)
        return m._combine_torch(m._user_losses(adapted, Qc, Qr, Qw))

    params = [p.clone().requires_grad_() for p in base]
    objective(params).backward()
    h = 1e-6
    for i, p in enumerate(base):
        for idx in list(np.ndindex(*p.shape))[:6]:
            plus = [q.clone() for q in base]
            minus = [q.clone() for q in base]
            plus[i][idx] += h
            minus[i][idx] -= h
            with torch.no_grad():
                num = (objective_nograd(m, plus, B, Sc, Sr, Sw, Qc, Qr, Qw) - objective_nograd(m, minus, B, Sc, Sr, Sw, Qc, Qr, Qw)) / (2 * h)
            assert float(params[i].grad[idx]) == pytest.approx(float(num), rel=1e-5, abs=1e-9)


def objective_nograd(m, params, B, Sc, Sr, Sw, Qc, Qr, Qw):
    with torch.enable_grad():
        expanded = tuple(p.clone().requires_grad_().unsqueeze(0).expand(B, *p.shape) for p in params)
        adapted = m._inner(expanded, Sc, Sr, Sw, 1, create_graph=False)
    return float(m._combine_torch(m._user_losses(adapted, Qc, Qr, Qw)))


# ============================================================================ mrm-no-basis: closed form vs autograd


@pytest.mark.parametrize("activation,optimizer", [("relu", "adam"), ("relu", "sgd"), ("linear", "adam")])
def test_no_basis_closed_form_meta_step_equals_autograd(activation, optimizer):
    """The hand-derived one-step meta-gradient (``_meta_step``) against the autograd reference
    (``_inner`` with create_graph=True through the expanded weights, then RPO), in float64."""
    m = MRMNoBasis(hidden=4, inner_lr=0.05, activation=activation, inner_optimizer=optimizer)
    rng = np.random.default_rng(1)
    B, n_s, n_q, D = 3, 3, 4, 6
    T = lambda *s: torch.tensor(rng.standard_normal(s))
    Sc, Sr, Qc, Qr = T(B, n_s, D), T(B, n_s, D), T(B, n_q, D), T(B, n_q, D)
    Sc[1, 2] = Sr[1, 2] = 0.0  # padded rows carry zero features and zero weight
    Sw = torch.full((B, n_s), 1.0 / n_s, dtype=torch.float64)
    Sw[1, 2], Sw[1, :2] = 0.0, 0.5
    Qw = torch.full((B, n_q), 1.0 / n_q, dtype=torch.float64)
    Qw[2, 3], Qw[2, :3] = 0.0, 1.0 / 3
    base = [T(4, D) * 0.5, T(4) * 0.5, T(4)]
    params = [p.clone().requires_grad_() for p in base]
    expanded = tuple(p.unsqueeze(0).expand(B, *p.shape) for p in params)
    adapted = m._inner(expanded, Sc, Sr, Sw, 1, create_graph=True, eps_hat=True)
    ref_losses = m._user_losses(adapted, Qc, Qr, Qw)
    m._combine_torch(ref_losses).backward()
    losses, backward = m._meta_step(base, torch.cat([Sc, Sr], 1), Sw, torch.cat([Qc, Qr], 1), Qw)
    np.testing.assert_allclose(losses.numpy(), ref_losses.detach().numpy(), rtol=1e-12)
    for ours, p in zip(backward(m._combine_weights(losses)), params):
        np.testing.assert_allclose(ours.numpy(), p.grad.numpy(), rtol=1e-9, atol=1e-12)
    assert float(params[0].grad.abs().max()) > 1e-3  # a gradient that can disagree


@pytest.mark.parametrize("family", ["prism-like", "reddit-like"])
def test_no_basis_closed_form_fit_and_score_match_reference_loop(family, monkeypatch):
    """Whole fit → adapt → score, the vectorised closed-form path against the old autograd loop
    (``_reference``) on tiny data: same losses, weights and scores within float32 tolerance."""
    tr, q, ctx = _toy(0, U=16, D=8)
    kw = dict(epochs=4, hidden=5, feature_scale=1.0, inner_lr=1e-3 if family == "prism-like" else 5e-2, meta_lr=5e-3)
    fast = MRMNoBasis(**kw).fit(tr.for_users(tr.seen), ctx).adapt(tr)
    monkeypatch.setattr(MRMNoBasis, "_reference", True)
    ref = MRMNoBasis(**kw).fit(tr.for_users(tr.seen), ctx).adapt(tr)
    np.testing.assert_allclose(fast.epoch_losses_, ref.epoch_losses_, rtol=1e-5)
    for a, b in zip(fast.params_, ref.params_):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-6)
    s_fast, s_ref = fast.score(q), ref.score(q)
    assert not np.allclose(s_ref, MRMNoBasis(**kw).fit(tr.for_users(tr.seen), ctx).adapt(tr.for_users(np.zeros(tr.n_users, bool))).score(q))
    np.testing.assert_allclose(s_fast, s_ref, rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(s_fast > 0, s_ref > 0)

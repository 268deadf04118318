"""LoRe: equality with a torch transcription of the official objective, planted-structure recovery,
unseen-user handling and parameter counts."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.linalg import subspace_angles

from bench.api import Context, ParamCount
from bench.errors import BenchError
from bench.methods.bt import BT
from bench.methods.lore import LoRe, fit_simplex_weights, softmax_rows
from bench.runner import make_context, pair_view, run_single
from bench.splits import make_split
from tests.planted import opposed_basis, planted_dataset


def _torch_lore(d, user, n_users, W0, V0, iterations, lr):
    """The official ``LoRe.forward``/``train`` (alpha = 0): Σ_users mean −log σ(dᵀ V softmax(w_u) / 100)."""
    W = torch.tensor(W0, requires_grad=True)
    V = torch.tensor(V0, requires_grad=True)
    opt = torch.optim.Adam([W, V], lr=lr)
    d_t, u_t = torch.tensor(d), torch.tensor(user)
    for _ in range(iterations):
        opt.zero_grad()
        vw = V @ torch.softmax(W, dim=1).T  # (D, users)
        logits = (d_t * vw[:, u_t].T).sum(1) / 100.0
        nll = -torch.nn.functional.logsigmoid(logits)
        loss = sum(nll[u_t == i].sum() / (u_t == i).sum() for i in range(n_users))
        loss.backward()
        opt.step()
    return W.detach().numpy(), V.detach().numpy()


def test_fit_equals_official_objective_with_torch_adam():
    ds, _ = planted_dataset(users=12, pairs_per_user=20, dim=8)
    split = make_split(ds, 0)
    train = pair_view(ds, split, split.budget_mask(None, 0) & split.seen[split.user_index])
    ctx = make_context(ds, 0)
    m = LoRe(n_basis=3, iterations=25).fit(train, ctx)
    g = ctx.torch_generator()
    n_seen = int(split.seen.sum())
    W0, V0 = torch.randn(n_seen, 3, generator=g).numpy(), torch.randn(8, 3, generator=g).numpy()
    local = np.cumsum(split.seen) - 1
    d = ds.features.diff(train.chosen, train.rejected)
    W, V = _torch_lore(d, local[train.user], n_seen, W0, V0, 25, 0.5)
    np.testing.assert_allclose(m.W_, W, rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(m.V_, V, rtol=1e-3, atol=1e-3)


def test_unseen_fit_equals_official_personalize_batch():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((30, 4)).astype(np.float32) * 50
    user = np.repeat(np.arange(3), 10)
    w0 = rng.standard_normal((3, 4)).astype(np.float32)
    w = fit_simplex_weights(z, user, 3, w0, 40, 0.1, 0.01, np.full(30, 0.1, np.float32))
    # official PersonalizeBatch: one randn vector per user, Σ_users mean −log σ(z_u · softmax(w_u) / 100)
    wt = [torch.tensor(w0[i], requires_grad=True) for i in range(3)]
    opt = torch.optim.Adam(wt, lr=0.1)
    zt = torch.tensor(z)
    for _ in range(40):
        opt.zero_grad()
        loss = sum(-torch.nn.functional.logsigmoid(zt[user == i] @ torch.softmax(wt[i], 0) / 100).sum() / 10 for i in range(3))
        loss.backward()
        opt.step()
    np.testing.assert_allclose(w, torch.stack(wt).detach().numpy(), rtol=1e-4, atol=1e-5)


def test_recovers_planted_rank_k_subspace():
    ds, truth = planted_dataset(users=60, pairs_per_user=80, dim=16, beta=4.0)
    r = run_single(LoRe(n_basis=2), ds, seed=0)
    angles = np.degrees(subspace_angles(r.method.V_, truth["basis"]))
    assert angles.max() < 25, angles
    # a random 2-D subspace of R^16 is far from the planted one: the check can fail
    rand = np.degrees(subspace_angles(np.random.default_rng(1).standard_normal((16, 2)), truth["basis"]))
    assert rand.max() > 60


def test_beats_bt_when_users_differ_along_the_subspace():
    coords = np.eye(2)[np.arange(60) % 2]  # two clusters: shared·q ± taste·t
    ds, _ = planted_dataset(users=60, pairs_per_user=60, dim=16, basis=opposed_basis(16, 0.5, 1.0), coords=coords, beta=3.0)
    lore = run_single(LoRe(n_basis=2), ds, seed=0).per_user.groupby("seen").accuracy.mean()
    bt = run_single(BT(), ds, seed=0).per_user.groupby("seen").accuracy.mean()
    assert lore[True] > bt[True] + 0.1, (lore, bt)
    assert lore[False] > bt[False] + 0.1, (lore, bt)


def test_unseen_users_are_fitted_independently_and_zero_support_gets_the_prior():
    ds, _ = planted_dataset(users=20, pairs_per_user=20, dim=8)
    r = run_single(LoRe(n_basis=3, iterations=50, adapt_iterations=30), ds, seed=3)
    m, split = r.method, r.split
    full = pair_view(ds, split, split.budget_mask(None, None))
    m.adapt(full)
    all_users = m.weights_.copy()
    unseen = np.flatnonzero(~split.seen)
    keep, drop = unseen[0], unseen[1]
    mask = split.budget_mask(None, None) & (split.seen[split.user_index] | (split.user_index == keep))
    m.adapt(pair_view(ds, split, mask))
    # the kept user's weights do not depend on which other unseen users adapt
    np.testing.assert_allclose(m.weights_[keep], all_users[keep], rtol=1e-6)
    # a user with no support gets the seen users' mean weights
    np.testing.assert_allclose(m.weights_[drop], softmax_rows(m.W_).mean(0), rtol=1e-6)
    np.testing.assert_allclose(m.weights_[split.seen], all_users[split.seen])
    m.zero_shot = "uniform"
    m.prior_ = m._prior(softmax_rows(m.W_))
    m.adapt(pair_view(ds, split, mask))
    np.testing.assert_allclose(m.weights_[drop], np.full(3, 1 / 3), rtol=1e-6)


def test_parameters_grow_linearly_with_users():
    """Figure 7: shared D·K plus K per user, counted on the trained tensors."""
    totals = {}
    for users in (10, 20, 40):
        ds, _ = planted_dataset(users=users, pairs_per_user=10, dim=8, seed=users)
        r = run_single(LoRe(n_basis=4, iterations=5, adapt_iterations=5), ds, seed=0)
        m = r.method
        assert m.param_count() == ParamCount(shared=8 * 4, per_user=4) == m.trained_param_count()
        n_seen = int(r.split.seen.sum())
        assert m.V_.size + m.W_.size == m.param_count().total(n_seen)
        totals[n_seen] = m.param_count().total(n_seen)
    ns = sorted(totals)
    slopes = {(totals[b] - totals[a]) / (b - a) for a, b in zip(ns, ns[1:])}
    assert slopes == {4.0}


def test_same_seed_same_result_and_other_seed_differs():
    ds, _ = planted_dataset(users=12, pairs_per_user=12, dim=8)
    a = run_single(LoRe(n_basis=2, iterations=30), ds, seed=0).margin
    b = run_single(LoRe(n_basis=2, iterations=30), ds, seed=0).margin
    c = run_single(LoRe(n_basis=2, iterations=30), ds, seed=1).margin
    np.testing.assert_array_equal(a, b)
    assert len(a) != len(c) or not np.array_equal(a, c)


@pytest.mark.parametrize(
    "params, words",
    [
        ({"n_basis": 0}, "n_basis"),
        ({"iterations": -1}, "iterations"),
        ({"lr": 0}, "lr"),
        ({"zero_shot": "random"}, "zero_shot"),
        ({"balance": "nope"}, "balance"),
    ],
)
def test_bad_parameters_are_named(params, words):
    ds, _ = planted_dataset(users=6, pairs_per_user=6, dim=4)
    with pytest.raises(BenchError, match=words):
        run_single(LoRe(**params), ds, seed=0)


def test_no_features_or_no_pairs_is_a_clear_error():
    ds, _ = planted_dataset(users=6, pairs_per_user=6, dim=4)
    split = make_split(ds, 0)
    empty = pair_view(ds, split, np.zeros(len(ds.pairs), dtype=bool))
    with pytest.raises(BenchError, match="no training pairs") as e:
        LoRe().fit(empty, make_context(ds, 0))
    assert e.value.hint
    with pytest.raises(BenchError, match="needs features"):
        LoRe().fit(empty, Context(info=ds.info()))

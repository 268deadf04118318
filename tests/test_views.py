"""What the engine hands a method: fit sees only seen users' train pairs within budget, supports
only train pairs, queries carry no labels, and the validation carve-out only splits train groups."""

import dataclasses

import numpy as np

from bench.api import Queries
from bench.runner import pair_view, query_view, held_out_mask
from bench.splits import make_split


def test_fit_view_is_seen_train_within_budget(tiny_reddit):
    sp = make_split(tiny_reddit, 0)
    view = pair_view(tiny_reddit, sp, sp.budget_mask(7, 0) & sp.seen[sp.user_index])
    assert sp.seen[view.user].all()
    counts = view.counts()
    assert counts[sp.seen].max() == 7 and counts[~sp.seen].sum() == 0
    pid = set(view.pair_id)
    train_ids = set(tiny_reddit.pairs["pair_id"][sp.train])
    assert pid <= train_ids
    # sorted by user, then support order: pairs[:k] of a user is its budget-k support
    assert (np.diff(view.user) >= 0).all()


def test_support_view_never_contains_test_pairs(tiny_prism):
    sp = make_split(tiny_prism, 1)
    view = pair_view(tiny_prism, sp, sp.budget_mask(None, 2))
    test_ids = set(tiny_prism.pairs["pair_id"][~sp.train])
    assert not (set(view.pair_id) & test_ids)
    assert view.counts()[~sp.seen].max() <= 2


def test_queries_hide_labels_and_orientation_is_balanced(tiny_reddit):
    sp = make_split(tiny_reddit, 0)
    q, a_is_chosen = query_view(tiny_reddit, sp, held_out_mask(tiny_reddit, sp, None), with_truth=False)
    fields = {f.name for f in dataclasses.fields(Queries)}
    assert not any("chosen" in f or "label" in f for f in fields)
    assert q.truth_a is None and q.truth_b is None
    assert 0.4 < a_is_chosen.mean() < 0.6
    # same seed → same orientation; another seed → a different one
    _, again = query_view(tiny_reddit, sp, held_out_mask(tiny_reddit, sp, None), with_truth=False)
    assert np.array_equal(a_is_chosen, again)


def test_test_fraction_is_a_fixed_subsample(tiny_reddit):
    s0, s1 = make_split(tiny_reddit, 0), make_split(tiny_reddit, 1)
    m0, m1 = held_out_mask(tiny_reddit, s0, 0.25), held_out_mask(tiny_reddit, s1, 0.25)
    assert 0.15 < m0.sum() / (~s0.train).sum() < 0.35
    # the subsample of a pair does not depend on the split seed (shared by every compared method)
    assert np.array_equal(m0, m1)


def test_validation_carve_out_splits_train_groups_only(tiny_prism):
    sp = make_split(tiny_prism, 0)
    train = pair_view(tiny_prism, sp, sp.budget_mask(None, 0) & sp.seen[sp.user_index])
    fit, val = train.carve_validation(0.3, min_groups=2)
    assert len(fit) + len(val) == len(train)
    assert not (set(fit.group) & set(val.group))
    assert set(val.pair_id) <= set(train.pair_id)
    again_fit, again_val = train.carve_validation(0.3, min_groups=2)
    assert np.array_equal(val.pair_id, again_val.pair_id)
    # users with fewer groups than min_groups keep everything for fitting
    g_per_user = np.array([len(set(train.group[train.user == u])) for u in range(train.n_users)])
    few = np.flatnonzero((g_per_user > 0) & (g_per_user < 2))
    assert not np.isin(val.user, few).any()

"""The contract every registered method must meet, run on tiny synthetic data.

A new method is picked up automatically through its entry point; it may set ``test_params``
(a tiny configuration) and ``test_dataset`` (a dataset spec it can run on, default a tiny
synthetic PRISM-like set).
"""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from bench.api import Method
from bench.datasets import load_dataset
from bench.registry import describe, METHOD_GROUP
from bench.runner import check_capabilities, pair_view, query_view, run_single
from bench.splits import make_split
from tests.conftest import TINY_PRISM

CARD_SECTIONS = ("## Paper", "## Official code", "## Settings", "## Unseen users", "## Deviations", "## Parameters")

METHODS = sorted(i.name for i in describe(METHOD_GROUP) if i.error is None)


def _cls(name):
    from bench.registry import load_method

    return load_method(name)


def _dataset(cls):
    spec = getattr(cls, "test_dataset", None) or TINY_PRISM
    ds = load_dataset(spec)
    why = check_capabilities(cls, ds)
    if why:
        pytest.skip(f"{cls.name} {why}")
    return ds


def _make(cls, **extra):
    return cls(**{**cls.test_params, **extra})


@pytest.mark.parametrize("name", METHODS)
def test_card_is_complete(name):
    cls = _cls(name)
    card = cls.card()
    assert card, f"{name} has no card at {cls.card_path()}"
    for section in CARD_SECTIONS:
        assert section in card, f"{name}'s card lacks '{section}'"


@pytest.mark.parametrize("name", METHODS)
def test_init_only_stores_params(name):
    cls = _cls(name)
    m = _make(cls)
    params = m.get_params()
    assert set(params) == set(cls.param_names())
    for k, v in cls.test_params.items():
        assert params[k] == v
    json.dumps(params)  # params must be serialisable: they are part of the cell key
    assert not any(k.endswith("_") for k in vars(m)), "fitted attributes must not exist before fit"


@pytest.mark.parametrize("name", METHODS)
def test_fit_adapt_score_contract(name):
    cls = _cls(name)
    ds = _dataset(cls)
    r1 = run_single(_make(cls), ds, seed=0)
    n = len(r1.queries)
    assert r1.margin.shape[0] == n and r1.margin.ndim in (1, 2)
    assert np.isfinite(r1.margin).mean() > 0.99
    # same seed → identical scores
    r2 = run_single(_make(cls), ds, seed=0)
    np.testing.assert_array_equal(r1.margin, r2.margin)
    # accuracy is a real number for every user with test pairs
    assert r1.per_user.loc[r1.per_user["n_test"] > 0, "accuracy"].between(0, 1).all()


@pytest.mark.parametrize("name", METHODS)
def test_adapt_does_not_change_what_fit_learned(name):
    cls = _cls(name)
    ds = _dataset(cls)
    split = make_split(ds, 1)
    r = run_single(_make(cls), ds, seed=1, shots=None, unseen_shots=None)
    m = r.method
    small = pair_view(ds, split, split.budget_mask(None, 1))
    full = pair_view(ds, split, split.budget_mask(None, None))
    m.adapt(small)
    m.adapt(full)
    again = np.asarray(m.score(r.queries), dtype=np.float64)
    np.testing.assert_allclose(again, r.margin, rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("name", METHODS)
def test_supports_from_zero_to_budget(name):
    """Every method handles unseen users with 0, 1 and a few support pairs."""
    cls = _cls(name)
    ds = _dataset(cls)
    for k in (0, 1, 3):
        r = run_single(_make(cls), ds, seed=2, unseen_shots=k)
        unseen = ~r.per_user["seen"].to_numpy()
        assert (r.per_user.loc[unseen, "n_support"] <= k).all()
        assert np.isfinite(r.margin).mean() > 0.99


@pytest.mark.parametrize("name", METHODS)
def test_parameter_count_matches_trained_tensors(name):
    cls = _cls(name)
    ds = _dataset(cls)
    r = run_single(_make(cls), ds, seed=0)
    formula = r.method.param_count()
    trained = r.method.trained_param_count()
    assert formula.shared >= 0 and formula.per_user >= 0
    if trained is not None:
        assert trained == formula, f"{name}: formula {formula} but trained tensors {trained}"


@pytest.mark.parametrize("name", METHODS)
def test_swapping_options_negates_pointwise_scores(name):
    cls = _cls(name)
    if not getattr(cls, "antisymmetric", True):
        pytest.skip(f"{name} judges pairs jointly")
    ds = _dataset(cls)
    r = run_single(_make(cls), ds, seed=0)
    q = r.queries
    swapped = replace(q, a=q.b, b=q.a, truth_a=q.truth_b, truth_b=q.truth_a)
    np.testing.assert_allclose(np.asarray(r.method.score(swapped)), -r.margin, rtol=1e-5, atol=1e-6)


def test_every_registered_method_is_covered():
    assert {"bt", "rm", "oracle"} <= set(METHODS)
    for name in METHODS:
        assert issubclass(_cls(name), Method)

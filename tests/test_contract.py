"""The contract every registered method must meet, run on tiny synthetic data.

The checks themselves live in :mod:`bench.testing`, which ships with bench so that a plugin's
author runs the very same ones (``python -m bench.testing NAME``). A new method is picked up
automatically through its entry point; it may set ``test_params`` (a tiny configuration) and
``test_dataset`` (a dataset spec it can run on, default a tiny synthetic PRISM-like set).
Determinism through ``bench run`` is checked for every method at once in ``test_determinism.py``.
"""

from __future__ import annotations

import pytest

from bench import testing
from bench.api import Method
from bench.registry import METHOD_GROUP, describe
from tests.conftest import TINY_PRISM

CARD_SECTIONS = testing.CARD_SECTIONS
METHODS = sorted(i.name for i in describe(METHOD_GROUP) if i.error is None)


def _check(check: str, name: str) -> None:
    from bench.registry import load_method

    try:
        testing.CHECKS[check](load_method(name))
    except testing.Skip as e:
        pytest.skip(str(e))


def test_the_shipped_default_dataset_is_the_suites():
    assert testing.TEST_DATASET == TINY_PRISM


@pytest.mark.parametrize("name", METHODS)
def test_card_is_complete(name):
    _check("card", name)


@pytest.mark.parametrize("name", METHODS)
def test_init_only_stores_params(name):
    _check("init", name)


@pytest.mark.parametrize("name", METHODS)
def test_fit_adapt_score_contract(name):
    _check("fit_adapt_score", name)


@pytest.mark.parametrize("name", METHODS)
def test_adapt_does_not_change_what_fit_learned(name):
    _check("adapt_keeps_fit", name)


@pytest.mark.parametrize("name", METHODS)
def test_supports_from_zero_to_budget(name):
    """Every method handles unseen users with 0, 1 and a few support pairs."""
    _check("supports", name)


@pytest.mark.parametrize("name", METHODS)
def test_parameter_count_matches_trained_tensors(name):
    _check("param_count", name)


@pytest.mark.parametrize("name", METHODS)
def test_swapping_options_negates_pointwise_scores(name):
    _check("antisymmetry", name)


def test_every_registered_method_is_covered():
    assert {"bt", "rm", "oracle"} <= set(METHODS)
    for name in METHODS:
        from bench.registry import load_method

        assert issubclass(load_method(name), Method)

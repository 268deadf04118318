"""The crossed users × splits machinery (bench/crossed.py) against closed forms."""

from __future__ import annotations

import numpy as np
import pytest

from bench.crossed import crossed_batch, crossed_inference, worst_k_pseudo
from bench.metrics import worst_k


def test_balanced_variance_is_the_two_way_anova_combination():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(30, 1)) * 0.05 + rng.normal(size=(1, 6)) * 0.02 + rng.normal(size=(30, 6)) * 0.03
    N, S = y.shape
    gm = y.mean()
    ms_u = S * ((y.mean(1) - gm) ** 2).sum() / (N - 1)
    ms_s = N * ((y.mean(0) - gm) ** 2).sum() / (S - 1)
    res = y - y.mean(1, keepdims=True) - y.mean(0, keepdims=True) + gm
    ms_e = (res ** 2).sum() / ((N - 1) * (S - 1))
    r = crossed_inference(y)
    assert r.estimate == pytest.approx(gm, abs=1e-15)
    assert r.se ** 2 == pytest.approx((ms_u + ms_s - ms_e) / (N * S), rel=1e-10)
    assert r.var_users + r.var_splits + r.var_error == pytest.approx(r.se ** 2, rel=1e-12)


def test_unbalanced_estimate_is_the_mean_over_splits_of_each_split_s_macro_mean():
    rng = np.random.default_rng(1)
    y = rng.normal(size=(20, 5))
    y[rng.random(y.shape) < 0.5] = np.nan
    r = crossed_inference(y)
    assert r.estimate == pytest.approx(np.nanmean(np.nanmean(y, axis=0)), abs=1e-12)


def test_variance_estimate_is_unbiased_on_a_half_observed_design():
    rng = np.random.default_rng(2)
    R, N, S = 3000, 30, 6
    y = rng.normal(0, 0.05, (R, N, 1)) + rng.normal(0, 0.02, (R, 1, S)) + rng.normal(0, 0.03, (R, N, S))
    y[rng.random(y.shape) < 0.5] = np.nan  # e.g. the seen population: a random half per split
    out = crossed_batch(y)
    ratio = np.nanmean(out["se"] ** 2) / np.var(out["estimate"])
    assert 0.9 < ratio < 1.1
    assert 0.93 <= np.mean((out["ci_low"] <= 0) & (0 <= out["ci_high"])) <= 0.97


@pytest.mark.parametrize("k", [0.1, 0.2, 0.5])
def test_worst_k_pseudo_values_average_to_the_worst_k_mean(k):
    rng = np.random.default_rng(3)
    x = np.round(rng.random((37, 4)), 1)  # ties included
    x[[2, 9], 1] = np.nan
    psi = worst_k_pseudo(x, k)
    assert np.isnan(psi[[2, 9], 1]).all()
    for s in range(4):
        assert np.nanmean(psi[:, s]) == pytest.approx(worst_k(x[:, s], k), abs=1e-12)


def test_no_interval_cases_are_said_in_words():
    assert "one split" in crossed_inference(np.random.default_rng(0).random((8, 1))).note
    const = crossed_inference(np.full((8, 4), 0.03))
    assert "same value" in const.note and np.isnan(const.pvalue) and np.isnan(const.ci_low)
    per_user = crossed_inference(np.tile(np.linspace(-0.1, 0.1, 8)[:, None], (1, 4)) + 0.02)
    assert per_user.ok and per_user.ci_low < 0.02 < per_user.ci_high  # constant over splits, varies over users
    assert per_user.var_splits == 0.0
    assert crossed_inference(np.full((0, 0), np.nan)).note == "no paired values"

import math

import numpy as np
import pandas as pd
import pytest

from bench.metrics import bayes_accuracy, cell_metrics, mean_std, pair_credit, split_metrics, user_accuracy, worst_k


def test_pair_credit_ties_and_nan_are_wrong():
    margin = np.array([1.0, -2.0, 0.0, np.nan, 0.5])
    a_chosen = np.array([True, False, True, True, False])
    assert pair_credit(margin, a_chosen).tolist() == [1.0, 1.0, 0.0, 0.0, 0.0]


def test_pair_credit_replicates_average():
    # two judgements per pair (e.g. both orders): right+wrong = 0.5
    margin = np.array([[1.0, -1.0], [1.0, 1.0], [0.0, -3.0]])
    a_chosen = np.array([True, True, False])
    assert pair_credit(margin, a_chosen).tolist() == [0.5, 1.0, 0.5]


def test_user_accuracy_hand_computed():
    user = np.array([0, 0, 0, 2, 2])
    credit = np.array([1, 0, 1, 1, 1], dtype=float)
    n_correct, n_test, acc = user_accuracy(user, credit, 3)
    assert n_test.tolist() == [3, 0, 2]
    assert n_correct.tolist() == [2, 0, 2]
    assert acc[0] == pytest.approx(2 / 3) and math.isnan(acc[1]) and acc[2] == 1.0


def test_worst_k_uses_ceiling_of_k_n():
    acc = [0.9, 0.1, 0.5, 0.3, 0.7, 0.2, 0.8, 0.6, 0.4, 1.0, 0.55]  # N = 11
    assert worst_k(acc, 0.10) == pytest.approx((0.1 + 0.2) / 2)  # ceil(1.1) = 2
    assert worst_k(acc, 0.20) == pytest.approx((0.1 + 0.2 + 0.3) / 3)  # ceil(2.2) = 3
    assert worst_k(acc, 0.50) == pytest.approx(np.mean([0.1, 0.2, 0.3, 0.4, 0.5, 0.55]))  # ceil(5.5) = 6
    assert worst_k([0.2, 0.4, 0.6, 0.8, 1.0, 0.3, 0.5, 0.7, 0.9, 0.1], 0.1) == pytest.approx(0.1)  # exact: 1


def test_worst_k_ignores_users_without_test_pairs():
    assert worst_k([np.nan, 0.5, 0.7], 0.5) == pytest.approx(0.5)


def test_split_metrics_macro_means():
    seen = np.array([True, True, False, False, False])
    acc = np.array([1.0, 0.5, 0.2, 0.4, 0.6])
    m = split_metrics(seen, acc)
    assert m["seen"] == pytest.approx(0.75)
    assert m["unseen"] == pytest.approx(0.4)
    assert m["overall"] == pytest.approx(np.mean(acc))
    assert m["unseen_worst10"] == pytest.approx(0.2)
    assert m["overall_worst50"] == pytest.approx((0.2 + 0.4 + 0.5) / 3)


def test_mean_std_is_sample_std():
    mean, std, n = mean_std([0.6, 0.7, 0.8])
    assert (mean, n) == (pytest.approx(0.7), 3)
    assert std == pytest.approx(0.1)
    assert math.isnan(mean_std([0.6])[1])


def test_cell_metrics_groups_by_cell():
    rows = pd.DataFrame(
        {"cell": ["a", "a", "b", "b"], "seen": [True, False, True, False], "accuracy": [1.0, 0.0, 0.5, 0.5]}
    )
    out = cell_metrics(rows).set_index("cell")
    assert out.loc["a", "overall"] == 0.5 and out.loc["a", "seen"] == 1.0 and out.loc["b", "unseen"] == 0.5


def test_bayes_accuracy():
    assert bayes_accuracy(np.array([0.9, 0.2, 0.5])) == pytest.approx((0.9 + 0.8 + 0.5) / 3)

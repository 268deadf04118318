"""bench.stats against reference implementations (scipy, statsmodels) on fixed inputs."""

import warnings

import numpy as np
import pandas as pd
import pytest
import scipy.stats as ss

from bench.stats import corrected_resampled_ttest, holm, paired_cluster_bootstrap, wilcoxon_signed_rank

RNG = np.random.default_rng(20240611)
WILCOXON_CASES = {
    "exact, S=10": RNG.normal(0.01, 0.02, 10),
    "exact, S=20": RNG.normal(0.004, 0.02, 20),
    "exact, S=5": np.array([1.0, -2, 3, -4, 5]),
    "sign-flip with a zero": np.array([0.01, 0.02, 0, 0.03, -0.01, 0.025, 0.015, 0.05]),
    "sign-flip with ties": np.array([1.0, 2, 2, -3, 4, 4, 4, -1, 5]),
    "normal with ties and zeros": np.array([1, 2, 2, 3, -1, 0, 0, 4, 5, -2, 3, 3, 1, 2, 6, -3.0]),
    "normal, rounded": np.round(RNG.normal(0, 1, 30), 1),
    "normal, S=60": RNG.normal(0.1, 1, 60),
}


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
@pytest.mark.parametrize("case", list(WILCOXON_CASES))
def test_wilcoxon_matches_scipy_pratt(case, alternative):
    d = WILCOXON_CASES[case]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = ss.wilcoxon(d, zero_method="pratt", alternative=alternative)
    got = wilcoxon_signed_rank(d, alternative)
    assert got.statistic == pytest.approx(ref.statistic, abs=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-10, abs=1e-14)


def test_wilcoxon_smallest_p_with_five_splits_cannot_reach_005():
    r = wilcoxon_signed_rank([0.01, 0.02, 0.03, 0.04, 0.05])
    assert r.method == "exact" and r.pvalue == pytest.approx(2 / 2**5) and r.min_pvalue == pytest.approx(0.0625)
    assert r.pvalue > 0.05


def test_wilcoxon_degenerate_inputs():
    assert np.isnan(wilcoxon_signed_rank([]).pvalue)
    assert wilcoxon_signed_rank([0.0, 0.0, 0.0]).pvalue == 1.0  # all zero: no evidence
    assert wilcoxon_signed_rank([np.nan, 1.0, 2.0, -0.5]).n_splits == 3  # NaN dropped


@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_corrected_t_without_correction_is_the_one_sample_t_test(alternative):
    d = WILCOXON_CASES["exact, S=10"]
    got = corrected_resampled_ttest(d, n_train=100, n_test=0, alternative=alternative)
    ref = ss.ttest_1samp(d, 0.0, alternative=alternative)
    assert got.statistic == pytest.approx(ref.statistic, rel=1e-12)
    assert got.pvalue == pytest.approx(ref.pvalue, rel=1e-10)
    assert got.df == 9


def test_corrected_t_inflates_variance_by_the_nadeau_bengio_factor():
    d = WILCOXON_CASES["exact, S=20"]
    S, n_train, n_test = len(d), 643, 644
    got = corrected_resampled_ttest(d, n_train, n_test)
    plain = ss.ttest_1samp(d, 0.0)
    factor = 1 / S + n_test / n_train
    assert got.factor == pytest.approx(factor)
    # t_corrected = t_plain · sqrt((1/S) / factor)
    assert got.statistic == pytest.approx(plain.statistic * np.sqrt((1 / S) / factor), rel=1e-12)
    assert got.pvalue == pytest.approx(2 * ss.t.sf(abs(got.statistic), S - 1), rel=1e-12)
    assert got.pvalue > plain.pvalue
    # the interval is mean ± t_{0.975, S-1} · se with se = sqrt(factor · s²)
    se = np.sqrt(factor * d.var(ddof=1))
    q = ss.t.ppf(0.975, S - 1)
    assert (got.ci_low, got.ci_high) == pytest.approx((d.mean() - q * se, d.mean() + q * se), rel=1e-12)


def test_corrected_t_edge_cases():
    assert np.isnan(corrected_resampled_ttest([0.1], 10, 10).pvalue)
    # no split-to-split variance: the test has nothing to say (never p = 0 or t = ∞)
    for d in ([0.0, 0.0, 0.0], [0.02, 0.02, 0.02]):
        r = corrected_resampled_ttest(d, 10, 10)
        assert np.isnan(r.pvalue) and np.isnan(r.statistic) and np.isnan(r.ci_low) and r.mean == pytest.approx(d[0])
    with pytest.raises(ValueError, match="n_train"):
        corrected_resampled_ttest([0.1, 0.2], 0, 10)


@pytest.mark.parametrize("p", [
    [0.01, 0.04, 0.03, 0.2, 0.001, 0.04],
    [0.5, 0.5, 0.5],
    list(np.random.default_rng(3).uniform(0, 0.2, 25)),
])
def test_holm_matches_statsmodels(p):
    from statsmodels.stats.multitest import multipletests

    np.testing.assert_allclose(holm(p), multipletests(p, method="holm")[1], rtol=1e-12)


def test_holm_ignores_nan_and_keeps_it():
    from statsmodels.stats.multitest import multipletests

    got = holm([0.01, np.nan, 0.04])
    np.testing.assert_allclose(got[[0, 2]], multipletests([0.01, 0.04], method="holm")[1])
    assert np.isnan(got[1])


def test_bootstrap_single_split_matches_scipy_percentile_interval():
    rng = np.random.default_rng(7)
    a = rng.uniform(0.4, 0.9, 300)
    b = np.clip(a - 0.03 + rng.normal(0, 0.05, 300), 0, 1)
    ours = paired_cluster_bootstrap([a], [b], n_boot=20000, seed=1)
    ref = ss.bootstrap((a, b), lambda x, y, axis=-1: x.mean(axis=axis) - y.mean(axis=axis), paired=True,
                       vectorized=True, n_resamples=20000, method="percentile", random_state=2)
    assert ours.estimate == pytest.approx(a.mean() - b.mean())
    assert ours.ci_low == pytest.approx(ref.confidence_interval.low, abs=1.5e-3)
    assert ours.ci_high == pytest.approx(ref.confidence_interval.high, abs=1.5e-3)
    assert ours.se == pytest.approx(ref.standard_error, rel=0.05)
    assert ours.se == pytest.approx((a - b).std(ddof=1) / np.sqrt(len(a)), rel=0.05)


def test_bootstrap_averages_over_splits_and_keeps_strata():
    # seen users gain exactly 0.1, unseen users nothing: with strata kept, every replicate of the
    # overall mean difference is exactly 0.1 · n_seen / n — no spread at all.
    a = [np.r_[np.full(6, 0.7), np.full(4, 0.5)], np.r_[np.full(5, 0.6), np.full(5, 0.6)]]
    b = [np.r_[np.full(6, 0.6), np.full(4, 0.5)], np.r_[np.full(5, 0.5), np.full(5, 0.6)]]
    strata = [np.r_[np.ones(6), np.zeros(4)].astype(int), np.r_[np.ones(5), np.zeros(5)].astype(int)]
    r = paired_cluster_bootstrap(a, b, strata=strata, n_boot=500, seed=0)
    expect = (0.1 * 6 / 10 + 0.1 * 5 / 10) / 2
    assert r.estimate == pytest.approx(expect) and r.ci_low == pytest.approx(expect) and r.ci_high == pytest.approx(expect)
    free = paired_cluster_bootstrap(a, b, n_boot=500, seed=0)
    assert free.ci_high - free.ci_low > 0.01  # without strata the seen share varies


def test_bootstrap_worst_k_is_recomputed_per_method_on_the_same_users():
    rng = np.random.default_rng(11)
    a = [rng.uniform(0, 1, 50) for _ in range(3)]
    b = [x - 0.05 for x in a]
    r = paired_cluster_bootstrap(a, b, statistic=0.1, n_boot=300, seed=0)
    # a constant shift moves every order statistic by the same amount, in every resample
    assert r.estimate == pytest.approx(0.05) and r.ci_low == pytest.approx(0.05) and r.ci_high == pytest.approx(0.05)
    full = paired_cluster_bootstrap(a, b, statistic=1.0, n_boot=50, seed=0)
    mean = paired_cluster_bootstrap(a, b, statistic="mean", n_boot=50, seed=0)
    assert full.estimate == pytest.approx(mean.estimate)


def test_bootstrap_drops_users_missing_on_either_side_and_checks_alignment():
    r = paired_cluster_bootstrap([np.array([0.5, np.nan, 0.7])], [np.array([0.4, 0.6, np.nan])], n_boot=10)
    assert r.estimate == pytest.approx(0.1)
    with pytest.raises(ValueError, match="aligned"):
        paired_cluster_bootstrap([np.zeros(3)], [np.zeros(4)])


def _rows(seed, accs, seen, split_hash="h"):
    n = len(accs)
    return pd.DataFrame({"split_seed": seed, "split_hash": split_hash, "user": [f"u{i}" for i in range(n)],
                         "seen": seen, "accuracy": accs, "n_support": 4, "n_test": 5})


def test_compare_pairs_by_split_and_refuses_unpaired_cells():
    from bench.comparison import compare
    from bench.errors import BenchError

    rng = np.random.default_rng(5)
    seen = np.r_[np.ones(6, bool), np.zeros(6, bool)]
    ra = pd.concat([_rows(s, rng.uniform(0.5, 0.9, 12), seen) for s in range(6)])
    rb = ra.copy()
    rb["accuracy"] = rb["accuracy"] - 0.02
    c = compare(ra, rb, "A", "B", metric="overall")
    assert c.n_splits == 6 and c.diff == pytest.approx(0.02)
    # a constant difference for every user on every split: no interval, said in words
    assert not c.crossed.ok and "same value" in c.crossed.note and np.isnan(c.pvalue)
    assert c.nb is None  # the paper's corrected t is reported for seen/unseen only
    cu = compare(ra, rb, "A", "B", metric="unseen")
    assert (cu.nb.n_train, cu.nb.n_test) == (6, 6)  # users: seen vs unseen
    cp = compare(ra, rb, "A", "B", metric="unseen", n_unit="pairs")
    assert (cp.nb.n_train, cp.nb.n_test) == (6 * 4, 6 * 5)
    noisy = rb.copy()
    noisy["accuracy"] = noisy["accuracy"] + rng.normal(0, 0.01, len(noisy))
    cn = compare(ra, noisy, "A", "B", metric="overall")
    assert cn.crossed.ok and cn.crossed.ci_low < cn.diff < cn.crossed.ci_high
    assert cn.diff == pytest.approx(cn.crossed.estimate, abs=1e-12)  # the interval is about the reported number
    tail = compare(ra, noisy, "A", "B", metric="overall_worst20")  # ⌈0.2·12⌉ = 3 users in the tail: too few
    assert not tail.crossed.ok and "only 3 users in the worst 20%" in tail.crossed.note
    bad = rb.copy()
    bad.loc[bad["split_seed"] == 2, "split_hash"] = "other"
    with pytest.raises(BenchError, match="not paired on split 2"):
        compare(ra, bad, "A", "B")
    partial = compare(ra, rb[rb["split_seed"] < 4], "A", "B")
    assert partial.n_splits == 4 and partial.only_a == [4, 5]


def test_metric_names_are_validated():
    from bench.comparison import parse_metric
    from bench.errors import BenchError

    assert parse_metric("unseen_worst20") == ("unseen", 0.2)
    for bad in ("overal", "overall_worst30", "overall_best10"):
        with pytest.raises(BenchError):
            parse_metric(bad)


@pytest.mark.parametrize("n", [5, 37, 300])
def test_resampled_statistics_from_counts_equal_materialised_resamples(n):
    from bench.stats import _resampled_stat, resample_counts, worst_k_count

    rng = np.random.default_rng(n)
    x = np.round(rng.uniform(0, 1, n), 1)  # ties on purpose
    strata = (np.arange(n) < n // 2).astype(int)
    counts = resample_counts(strata, 200, np.random.default_rng(1))
    assert (counts[:, strata == 1].sum(1) == (strata == 1).sum()).all()  # stratum sizes kept
    samples = [np.repeat(x, c.astype(int)) for c in counts]
    np.testing.assert_allclose(_resampled_stat(x, counts, "mean"), [s.mean() for s in samples], atol=1e-6)
    for k in (0.1, 0.2, 0.5, 1.0):
        m = worst_k_count(n, k)
        np.testing.assert_allclose(_resampled_stat(x, counts, k), [np.sort(s)[:m].mean() for s in samples], atol=1e-6)


def test_bootstrap_cache_reuses_draws_without_changing_results():
    rng = np.random.default_rng(2)
    a = [rng.uniform(0, 1, 40) for _ in range(3)]
    b = [x - rng.uniform(0, 0.1, 40) for x in a]
    cache: dict = {}
    first = paired_cluster_bootstrap(a, b, statistic=0.2, n_boot=300, seed=4, cache=cache)
    again = paired_cluster_bootstrap(a, b, statistic=0.2, n_boot=300, seed=4, cache=cache)
    fresh = paired_cluster_bootstrap(a, b, statistic=0.2, n_boot=300, seed=4)
    assert first == again == fresh and len(cache) > 0

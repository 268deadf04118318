"""METHOD@tuned (bench/tuning.py): no test pair reaches selection; tuned cells are keyed apart."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from bench import tuning
from bench.errors import BenchError
from bench.registry import load_method
from bench.splits import make_split

SHOTS, UNSEEN = None, None


def _poison_test_labels(ds, split):
    """The same dataset with every test-half pair's chosen and rejected responses swapped."""
    pairs = ds.pairs.copy()
    test = ~split.train
    ch = pairs["chosen"].to_numpy().copy()
    rj = pairs["rejected"].to_numpy().copy()
    pairs.loc[test, "chosen"] = rj[test]
    pairs.loc[test, "rejected"] = ch[test]
    for a, b in (("true_chosen", "true_rejected"),):
        if a in pairs:
            ta, tb = pairs[a].to_numpy().copy(), pairs[b].to_numpy().copy()
            pairs.loc[test, a] = tb[test]
            pairs.loc[test, b] = ta[test]
    return dataclasses.replace(ds, pairs=pairs)


def _select(ds, seed, method="bt", budget=4, **params):
    from bench.config import resolve_params
    from bench.runner import make_context

    cls = load_method(method)
    official = resolve_params(cls, ds.family, {**cls.test_params, **params}, dataset=ds.name)
    spec = tuning.tuning_spec(method, ds.family, ds.name, official, budget=budget)
    split = make_split(ds, seed)
    return tuning.select(cls, spec, ds, split, SHOTS, UNSEEN, lambda: make_context(ds, seed))


def _choice(report):
    return report["chosen_index"], [r["score"] for r in report["validation"]]


def _check_unchanged_by_test_labels(ds, seed, **kw):
    split = make_split(ds, seed)
    poisoned = _poison_test_labels(ds, split)
    assert make_split(poisoned, seed).hash == split.hash  # same split, only test labels differ
    _, clean = _select(ds, seed, **kw)
    _, dirty = _select(poisoned, seed, **kw)
    return _choice(clean), _choice(dirty)


def test_masks_are_inside_the_train_halves_and_disjoint(tiny_prism):
    split = make_split(tiny_prism, 0)
    m = tuning.validation_masks(tiny_prism, split, None, None)
    for k in ("fit", "support", "query"):
        assert not (m[k] & ~split.train).any(), k
        assert not (m[k] & ~split.seen[split.user_index]).any(), k  # unseen users' pairs never used
    assert not (m["fit"] & m["query"]).any()
    assert not (m["support"] & m["query"]).any()
    vu = m["val_users"][split.user_index]
    assert m["val_users"].any() and not (m["fit"] & vu).any()  # validation users are not fitted on
    assert not (m["seen"] & m["val_users"]).any()
    # held-out groups never share a group with fit pairs
    g = tiny_prism.arrays()["group_code"]
    assert not set(g[m["query"]]) & set(g[m["support"]])


def test_unseen_budget_caps_the_validation_users_support(tiny_reddit):
    split = make_split(tiny_reddit, 0)
    m = tuning.validation_masks(tiny_reddit, split, 100, 7)
    vu = m["val_users"][split.user_index]
    counts = np.bincount(split.user_index[m["support"] & vu], minlength=len(split.users))
    assert counts[m["val_users"]].max() == 7


@pytest.mark.parametrize("method", ["bt", "mrm"])
def test_poisoned_test_labels_change_neither_choice_nor_scores(tiny_prism, method):
    clean, dirty = _check_unchanged_by_test_labels(tiny_prism, 0, method=method)
    assert clean == dirty
    assert len(clean[1]) == 4 and all(s is not None for s in clean[1])


def test_the_poisoning_check_fails_when_selection_reads_test_pairs(tiny_prism, monkeypatch):
    """The check above can fail: score the candidates on the test halves and it does."""
    real = tuning.validation_masks

    def leaky(ds, split, shots, unseen_shots):
        m = real(ds, split, shots, unseen_shots)
        m["query"] = ~split.train & split.seen[split.user_index]  # evaluate on test
        return m

    monkeypatch.setattr(tuning, "validation_masks", leaky)
    clean, dirty = _check_unchanged_by_test_labels(tiny_prism, 0, method="bt")
    assert clean[1] != dirty[1]


def test_candidates_official_first_distinct_and_reproducible():
    official = {"lr": 0.5, "iterations": 1000, "logit_scale": 0.01, "balance": "user"}
    space = {"lr": [0.05, 0.5, 2.0], "iterations": [300, 1000], "logit_scale": [0.01, 0.1]}
    a = tuning.candidates("bt", official, space, 8)
    assert a[0] == official and len(a) == 8
    assert len({tuple(sorted(c.items())) for c in a}) == 8
    assert a == tuning.candidates("bt", official, space, 8)
    assert len(tuning.candidates("bt", official, {"lr": [0.5, 1.0]}, 8)) == 2  # small grid: all of it
    assert tuning.candidates("bt", official, {}, 8) == [official]
    with pytest.raises(BenchError, match="unknown parameters"):
        tuning.candidates("bt", official, {"nope": [1]}, 8)


def test_every_embedding_method_declares_a_space_with_the_same_budget():
    from bench.config import resolve_params

    for name in ["bt", "lore", "lore-regularized", "mrm", "mrm-no-adapt", "pal", "vpl", "gpo"]:
        cls = load_method(name)
        space = tuning.search_space(name, "prism")
        assert space, name
        official = resolve_params(cls, "prism", {})
        spec = tuning.tuning_spec(name, "prism", "x", official)
        assert spec["budget"] == tuning.BUDGET and spec["candidates"][0] == official
        assert len(spec["candidates"]) == tuning.BUDGET, name


def test_tuned_run_stores_the_choice_and_is_keyed_apart(tmp_path, cli):
    from tests.conftest import TINY_PRISM

    from bench.store import ResultsStore

    code, out, err = cli("run", "--methods", "bt,bt@tuned", "--dataset", TINY_PRISM, "--seeds", "0",
                         "--results", tmp_path, "--param", "bt.iterations=40", "--no-table")
    assert code == 0, err
    rows, metas, problems = ResultsStore(tmp_path).load()
    assert not problems
    assert set(rows["method"]) == {"bt", "bt@tuned"}
    by = {m["cell"]["method"]: m for m in metas}
    assert "tuning" not in by["bt"]["cell"] and "tuning" in by["bt@tuned"]["cell"]
    t = by["bt@tuned"]["tuning"]
    assert t["budget"] == tuning.BUDGET and len(t["validation"]) == t["n_candidates"] == tuning.BUDGET
    assert t["candidates"][0]["iterations"] == 40  # --param bt.x sets the tuned run's anchor too
    chosen = rows[rows["method"] == "bt@tuned"]["params"].iloc[0]
    import json

    assert json.loads(chosen) == t["candidates"][0]  # rows keep the anchor, so splits group as one row
    assert t["chosen"] == t["candidates"][t["chosen_index"]]
    assert "tune bt@tuned seed 0: chose candidate" in out.replace("\n", " ")
    # resumed: nothing recomputed
    code, out, _ = cli("run", "--methods", "bt@tuned", "--dataset", TINY_PRISM, "--seeds", "0",
                       "--results", tmp_path, "--param", "bt.iterations=40", "--no-table")
    assert code == 0 and "0 cells computed" in out


def test_tune_flag_and_unknown_method(tmp_path, cli):
    from tests.conftest import TINY_PRISM

    code, _, err = cli("run", "--methods", "nosuch@tuned", "--dataset", TINY_PRISM, "--results", tmp_path)
    assert code == 2 and "nosuch" in err
    code, out, err = cli("run", "--methods", "bt", "--tune", "--dataset", TINY_PRISM, "--seeds", "0",
                         "--results", tmp_path, "--param", "bt.iterations=20")
    assert code == 0, err
    assert "bt@tuned" in out


def test_bad_space_is_one_clear_error(monkeypatch):
    from bench import config

    monkeypatch.setattr(config, "method_config", lambda name: {"tune": {"space": {"lr": 0.5}}})
    with pytest.raises(BenchError, match="non-empty list"):
        tuning.search_space("bt", "prism")


def test_domain_note_for_feature_scale(tiny_prism):
    norm = tuning._median_norm(tiny_prism)
    far = tuning.domain_notes("mrm", {"feature_scale": 1e-4 / norm}, tiny_prism)
    assert len(far) == 1 and "feature_scale" in far[0] and "mrm@tuned" in far[0]
    assert tuning.domain_notes("mrm", {"feature_scale": 1.0 / norm}, tiny_prism) == []
    assert tuning.domain_notes("bt", {"lr": 0.5}, tiny_prism) == []


def test_domain_note_is_printed_and_stored(tmp_path, cli, tiny_prism):
    from tests.conftest import TINY_PRISM

    from bench.store import ResultsStore

    scale = 1e-4 / tuning._median_norm(tiny_prism)
    code, out, err = cli("run", "--methods", "mrm", "--dataset", TINY_PRISM, "--seeds", "0", "--results", tmp_path,
                         "--param", "mrm.epochs=2", "--param", f"mrm.feature_scale={scale}", "--no-table")
    assert code == 0, err
    assert "[note] mrm: feature_scale" in out
    _, metas, _ = ResultsStore(tmp_path).load()
    assert metas[0]["domain_notes"] and "feature_scale" in metas[0]["domain_notes"][0]


def test_lore_regularized_runs_and_prunes(tiny_prism):
    from bench.runner import run_single

    cls = load_method("lore-regularized")
    r = run_single(cls(n_basis=4, iterations=80, adapt_iterations=20, alpha=10.0), tiny_prism, seed=0)
    acc = r.per_user["accuracy"].to_numpy()
    assert np.isfinite(acc[r.per_user["n_test"].to_numpy() > 0]).all()
    assert 1 <= r.method.kept_ <= 4
    assert r.method.extra_meta()["reference"].startswith("rm_head")


def test_lore_regularized_penalty_pulls_the_basis_to_the_reference(tiny_prism):
    from bench.methods.lore_regularized import reference_direction
    from bench.runner import make_context, pair_view

    split = make_split(tiny_prism, 0)
    ctx = make_context(tiny_prism, 0)
    train = pair_view(tiny_prism, split, split.train & split.seen[split.user_index])
    cls = load_method("lore-regularized")
    ref, _ = reference_direction(ctx, train, "rm_head")

    def mean_cos(alpha):
        m = cls(n_basis=3, iterations=100, alpha=alpha, prune=0.0).fit(train, ctx)
        V = m.V_ / np.linalg.norm(m.V_, axis=0)
        return float((ref @ V).mean())

    assert mean_cos(1e4) > 0.9 > mean_cos(0.0)

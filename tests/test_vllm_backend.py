"""The vLLM backend against the transformers backend's official recipe (CUDA + vllm only).

Set ``BENCH_VLLM_MODEL`` to a Hub id or a directory of a ``*ForSequenceClassification`` reward model
(default: Skywork/Skywork-Reward-V2-Llama-3.1-8B, which must be in the local Hugging Face cache).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

pytestmark = pytest.mark.gpu


def test_vllm_features_match_transformers_official():
    pytest.importorskip("vllm")
    from bench.features.encoders import HFEncoder, VLLMEncoder

    model = os.environ.get("BENCH_VLLM_MODEL", "Skywork/Skywork-Reward-V2-Llama-3.1-8B")
    texts = [
        [{"role": "user", "content": "What is a good first pet?"}, {"role": "assistant", "content": "A goldfish."}],
        [{"role": "user", "content": "Summarise: " + "the cat sat on the mat. " * 30}, {"role": "assistant", "content": "A cat sat."}],
    ]
    v = VLLMEncoder(model, gpu_memory_utilization=0.4)
    ids = [v.tokenize(t) for t in texts]
    feats, logits = v.embed_batch(ids)
    ref = HFEncoder(model, device="cuda", dtype="bfloat16")
    assert ref.identity.template_hash == v.identity.template_hash
    for j, x in enumerate(ids):
        f, lg = ref.embed_official(x)
        cos = float(feats[j] @ f / (np.linalg.norm(feats[j]) * np.linalg.norm(f)))
        assert cos > 0.995, cos  # bf16 kernels differ; a wrong token or a normalised vector would not pass
        assert abs(np.linalg.norm(feats[j]) - np.linalg.norm(f)) / np.linalg.norm(f) < 0.05  # not normalised
        assert abs(float(logits[j]) - lg) < 0.1 * (1 + abs(lg))

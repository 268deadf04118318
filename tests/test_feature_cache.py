"""Feature-cache pieces that need no model: batching, identity keys, cost estimate."""

from __future__ import annotations

import numpy as np

from bench.features.cache import ModelIdentity
from bench.features.extract import make_batches, sample_positions


def test_make_batches_respects_budget_and_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(5, 400, size=300)
    batches = make_batches(lengths, batch_tokens=2000, batch_size=16, max_pad=0.15)
    seen = np.concatenate(batches)
    assert sorted(seen.tolist()) == list(range(300))  # every text exactly once
    for b in batches:
        longest = lengths[b].max()
        assert len(b) <= 16
        assert len(b) * longest <= 2000 or len(b) == 1
        assert (lengths[b] >= 0.85 * longest).all()
    # One text longer than the budget still gets its own batch.
    assert [len(b) for b in make_batches(np.array([5000, 10]), 100, 8)] == [1, 1]


def test_identity_key_and_samples():
    a = ModelIdentity("Skywork/Skywork-Reward-V2-Llama-3.1-8B", "abc", "t1")
    assert a.key != ModelIdentity(a.model, "abd", "t1").key != ModelIdentity(a.model, "abc", "t2").key
    assert a.slug == "Skywork--Skywork-Reward-V2-Llama-3.1-8B"
    assert sample_positions(100, 5).tolist() == [0, 25, 50, 74, 99]
    assert sample_positions(3, 8).tolist() == [0, 1, 2]

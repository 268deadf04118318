"""SynthesizeMe-FT: persona-conditioned BT reward model (tiny random backbone, scripted personas)."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("transformers")

from bench.datasets import load_dataset  # noqa: E402
from bench.methods.synthesizeme import SynthesizeMe  # noqa: E402
from bench.methods.synthesizeme.ft import UNKNOWN_USER, SynthesizeMeFT  # noqa: E402
from bench.runner import run_single  # noqa: E402

DS = "text-prefs:users=6,pairs=6,features=none"
TINY = dict(backend="scripted", model="hash", rm_model="tiny-random", finetune="full", epochs=1, batch_size=4, max_length=160, lr=1e-3)


def test_persona_is_the_system_message_of_every_scored_text():
    ds = load_dataset(DS)
    r = run_single(SynthesizeMeFT(cache=False, **TINY), ds, seed=0, unseen_shots=0)
    m = r.method
    seen = np.flatnonzero(r.per_user["seen"].to_numpy())
    unseen = np.flatnonzero(~r.per_user["seen"].to_numpy())
    row = int(ds.pairs.chosen.iloc[0])
    text = m._render(m.personas_[seen[0]], row)
    assert m.personas_[seen[0]] in text and ds.responses.text[row] in text
    assert m.personas_[unseen[0]] is None and UNKNOWN_USER in m._render(None, row)
    # scores are pointwise: swapping a and b negates the margin (checked by the contract suite too)
    assert np.isfinite(r.margin).all()


def test_lora_counts_match_the_formula_and_freeze_the_backbone():
    ds = load_dataset(DS)
    r = run_single(SynthesizeMeFT(cache=False, **{**TINY, "finetune": "lora", "lora_r": 4}), ds, seed=0)
    m = r.method
    assert m.trained_param_count() == m.param_count()
    frozen = [n for n, p in m.backbone_.named_parameters() if not p.requires_grad]
    trained = [n for n, p in m.backbone_.named_parameters() if p.requires_grad]
    assert frozen and all("lora_" in n for n in trained)
    # 2 layers × r=4 × (q: 64+64, k: 64+32, v: 64+32, o: 64+64) + head 65
    assert m.param_count().shared == 2 * 4 * (128 + 96 + 96 + 128) + 65


def test_training_lowers_the_bt_loss():
    ds = load_dataset("text-prefs:users=6,pairs=8,features=none")
    r = run_single(SynthesizeMeFT(cache=False, **{**TINY, "epochs": 5, "lr": 3e-3}), ds, seed=0)
    losses = np.array(r.method.train_losses_)
    per_epoch = losses.reshape(5, -1).mean(axis=1)
    assert per_epoch[-1] < per_epoch[0] - 0.05, per_epoch


def test_personas_are_shared_with_synthesizeme_through_the_cache(tmp_path):
    ds = load_dataset(DS)
    path = str(tmp_path / "llm.sqlite")
    run_single(SynthesizeMe(backend="scripted", model="hash", cache=path), ds, seed=0)
    r = run_single(SynthesizeMeFT(cache=path, **TINY), ds, seed=0)
    m = r.method
    assert sum(st["backend_calls"] for st in m.fit_ledger_.stages.values()) == 0
    assert sum(st["backend_calls"] for st in m.ledger_.stages.values()) == 0
    assert (m.extra_rows()["llm_calls"] == 0).all()


def test_bad_settings_are_named():
    from bench.errors import BenchError

    ds = load_dataset(DS)
    with pytest.raises(BenchError, match="finetune must be 'lora' or 'full'"):
        run_single(SynthesizeMeFT(cache=False, **{**TINY, "finetune": "qlora"}), ds, seed=0)

"""What identifies a text for the feature cache: the model aliases and the hash of each response's
conversation and each prompt. Shared by the dataset loaders (:mod:`bench.datasets.textdata`) and the
feature cache (:mod:`bench.features.cache`), below both so that neither imports the other."""

from __future__ import annotations

import numpy as np

from bench.data import Dataset, messages_to_json
from bench.hashing import digest

# Aliases accepted by the ``features=`` dataset option and by ``bench embed --model``.
MODEL_ALIASES = {
    "v2": "Skywork/Skywork-Reward-V2-Llama-3.1-8B",
    "v1": "Skywork/Skywork-Reward-Llama-3.1-8B-v0.2",
}
DEFAULT_FEATURE_MODEL = MODEL_ALIASES["v2"]


def text_hashes(ds: Dataset) -> np.ndarray:
    """A 16-hex-digit hash of each response row's full conversation (prompt messages + response)."""
    pj = {int(k): messages_to_json(v) for k, v in ds.prompts.items()}
    pid = ds.responses["prompt_id"].to_numpy()
    text = ds.responses["text"].to_numpy(dtype=object)
    return np.array([digest(pj[int(p)] + "\x00" + str(t), size=8) for p, t in zip(pid, text)], dtype=object)


def prompt_hashes(ds: Dataset) -> np.ndarray:
    n = len(ds.prompts)
    return np.array([digest(messages_to_json(ds.prompts[str(i)]), size=8) for i in range(n)], dtype=object)

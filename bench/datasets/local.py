"""Bring your own data: a directory with a pairs table and a feature array.

Layout (see README § "Bring your own data")::

    my-data/
      pairs.parquet | pairs.jsonl | pairs.csv   one row per pairwise judgement
      features.npy | features.safetensors        float16/float32 features
      dataset.yaml                               optional: name, family, split_by, shots, …

Pairs columns: ``user`` (required), ``pair_id`` and ``group`` (optional; default: row number and
``pair_id``), ``chosen``/``rejected`` (integer rows of a (rows × dim) feature matrix) — or omit
them and give features of shape (pairs, 2, dim) holding [chosen, rejected] per pair —,
``split`` (optional ``train``/``test``: the dataset's own halves, ``split_by: source``),
``rm_chosen``/``rm_rejected`` (optional reward-model scores) and, optionally, text:
``prompt`` (a string or a JSON list of chat messages), ``chosen_text``, ``rejected_text``.
Every column, shape and dtype is validated; bad rows are named in the error.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.data import Dataset, Features, _preview, check_messages, load_features
from bench.errors import DataError
from bench.hashing import file_digest, hash_obj

PAIR_FILES = ("pairs.parquet", "pairs.jsonl", "pairs.csv")
FEATURE_FILES = ("features.npy", "features.safetensors")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)


def _read_pairs(path: Path) -> pd.DataFrame:
    try:
        if path.suffix == ".parquet":
            return pd.read_parquet(path)
        if path.suffix == ".jsonl":
            rows = []
            with open(path, encoding="utf-8") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(f"{path.name} line {i}: malformed JSON ({e.msg})", hint="fix or remove that line") from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{path.name} line {i}: expected a JSON object, got {type(rec).__name__}")
                    rows.append(rec)
            return pd.DataFrame.from_records(rows)
        return pd.read_csv(path)
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name} is not valid UTF-8 ({e.reason} at byte {e.start})", hint="re-encode the file as UTF-8") from None
    except Exception as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}", hint="the file is truncated or not in the stated format") from None


def load_directory(directory: Path) -> Dataset:
    directory = Path(directory)
    if not directory.is_dir():
        raise DataError(f"dataset directory not found: {directory}")
    pair_file = next((directory / f for f in PAIR_FILES if (directory / f).exists()), None)
    feat_file = next((directory / f for f in FEATURE_FILES if (directory / f).exists()), None)
    if pair_file is None:
        raise DataError(f"{directory} has no pairs table", hint=f"add one of {', '.join(PAIR_FILES)}")
    cfg: dict[str, Any] = {}
    if (directory / "dataset.yaml").exists():
        try:
            cfg = yaml.safe_load((directory / "dataset.yaml").read_text()) or {}
        except yaml.YAMLError as e:
            raise DataError(f"{directory / 'dataset.yaml'} is not valid YAML: {e}") from None
        if not isinstance(cfg, dict):
            raise DataError(f"{directory / 'dataset.yaml'} must be a mapping")
    name = str(cfg.get("name", directory.name))
    df = _read_pairs(pair_file)
    if "user" not in df.columns:
        raise DataError(f"{pair_file.name}: missing required column 'user'", hint="one user id per pair")
    n = len(df)
    if n == 0:
        raise DataError(f"{pair_file.name} has no rows")
    user = df["user"]
    if user.isna().any():
        raise DataError(f"{pair_file.name}: 'user' is empty in rows {_preview(np.flatnonzero(user.isna().to_numpy()))}")
    pair_id = df["pair_id"].astype(str) if "pair_id" in df.columns else pd.Series([str(i) for i in range(n)])
    group = df["group"].astype(str) if "group" in df.columns else pair_id
    # Groups are namespaced by user so that equal ids of two users never merge.
    group = user.astype(str) + "::" + group

    features = None
    arr = load_features(feat_file) if feat_file is not None else None
    if arr is not None and arr.dtype.type not in FLOAT_DTYPES:
        raise DataError(f"{feat_file.name}: dtype {arr.dtype} is not a float type", hint="store float16 or float32")
    has_idx = {"chosen", "rejected"} <= set(df.columns)
    if has_idx:
        for col in ("chosen", "rejected"):
            v = pd.to_numeric(df[col], errors="coerce")
            bad = np.flatnonzero(v.isna().to_numpy() | (v.to_numpy() % 1 != 0))
            if len(bad):
                raise DataError(f"{pair_file.name}: '{col}' must be integer row numbers; bad in rows {_preview(bad)}")
        chosen = df["chosen"].to_numpy().astype(np.int64)
        rejected = df["rejected"].to_numpy().astype(np.int64)
        n_rows = int(max(chosen.max(), rejected.max()) + 1) if arr is None else arr.shape[0]
        if arr is not None and arr.ndim != 2:
            raise DataError(
                f"{feat_file.name} has shape {arr.shape}; with chosen/rejected columns it must be (rows, dim)"
            )
    else:
        if arr is None:
            raise DataError(
                f"{pair_file.name} has no chosen/rejected columns and there is no feature file",
                hint="give chosen/rejected row numbers, or features of shape (pairs, 2, dim)",
            )
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1] != 2:
            raise DataError(
                f"{feat_file.name} has shape {arr.shape}; without chosen/rejected columns it must be ({n}, 2, dim)",
                hint="one [chosen, rejected] feature pair per row of the pairs table",
            )
        arr = arr.reshape(2 * n, arr.shape[2])
        chosen = 2 * np.arange(n, dtype=np.int64)
        rejected = chosen + 1
        n_rows = 2 * n
    for col, v in (("chosen", chosen), ("rejected", rejected)):
        bad = np.flatnonzero((v < 0) | (v >= n_rows))
        if len(bad):
            raise DataError(
                f"{pair_file.name}: '{col}' out of range [0, {n_rows}) in rows {_preview(bad)}",
                hint="chosen/rejected must index rows of the feature matrix",
            )
    if arr is not None:
        features = Features(arr)
        used = np.unique(np.r_[chosen, rejected])
        bad_rows = features.check_finite(used)
        if len(bad_rows):
            bad_pairs = np.flatnonzero(np.isin(chosen, bad_rows) | np.isin(rejected, bad_rows))
            raise DataError(
                f"{feat_file.name}: NaN/Inf features in rows {_preview(bad_rows)} used by pairs {_preview(bad_pairs)}",
                hint="re-extract those features or drop those pairs",
            )

    split_by = cfg.get("split_by")
    if "split" in df.columns:
        source = df["split"].astype(str).str.lower().replace({"validation": "test", "valid": "test", "val": "test"})
        split_by = split_by or "source"
    else:
        source = pd.Series([""] * n)
        split_by = split_by or "group"
        if split_by == "source":
            raise DataError(f"{directory}/dataset.yaml says split_by: source but {pair_file.name} has no 'split' column")

    responses = pd.DataFrame({"prompt_id": np.zeros(n_rows, dtype=np.int64)})
    if {"rm_chosen", "rm_rejected"} <= set(df.columns):
        rm = np.full(n_rows, np.nan)
        rc = pd.to_numeric(df["rm_chosen"], errors="coerce").to_numpy(dtype=np.float64)
        rr = pd.to_numeric(df["rm_rejected"], errors="coerce").to_numpy(dtype=np.float64)
        bad = np.flatnonzero(~np.isfinite(rc) | ~np.isfinite(rr))
        if len(bad):
            raise DataError(f"{pair_file.name}: rm_chosen/rm_rejected NaN, Inf or non-numeric in rows {_preview(bad)}")
        rm[chosen] = rc
        rm[rejected] = rr
        conflict = np.flatnonzero((rm[chosen] != rc) | (rm[rejected] != rr))
        if len(conflict):
            raise DataError(f"{pair_file.name}: one feature row gets different rm scores (pairs {_preview(conflict)})")
        responses["rm_score"] = np.nan_to_num(rm, nan=0.0)

    prompts = None
    if {"prompt", "chosen_text", "rejected_text"} <= set(df.columns):
        prompts, responses = _text_columns(df, chosen, rejected, responses, pair_file.name)

    pairs = pd.DataFrame(
        {
            "user": user.astype(str).to_numpy(),
            "group": group.to_numpy(),
            "pair_id": pair_id.to_numpy(),
            "chosen": chosen,
            "rejected": rejected,
            "source_split": source.to_numpy(),
        }
    )
    fp = hash_obj(
        {
            "byo": 1,
            "pairs": file_digest(pair_file),
            "features": None if feat_file is None else file_digest(feat_file),
            "config": cfg,
        },
        size=12,
    )
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=prompts,
        features=features,
        split_by=split_by,
        family=str(cfg.get("family", "generic")),
        fingerprint=fp,
        defaults={k: cfg[k] for k in ("shots", "unseen_shots") if k in cfg},
        meta={
            "source": str(directory),
            "description": cfg.get("description", ""),
            "feature_model": str(cfg.get("feature_model", "unknown" if features is not None else "none")),
        },
    )
    return ds.validate()


def _text_columns(df, chosen, rejected, responses, fname):
    prompts: dict[str, list[dict[str, str]]] = {}
    prompt_of_row = np.full(len(responses), -1, dtype=np.int64)
    text_of_row: list[Any] = [None] * len(responses)
    key_to_id: dict[str, int] = {}
    for i, (p, ct, rt) in enumerate(zip(df["prompt"], df["chosen_text"], df["rejected_text"])):
        if isinstance(p, str) and p.lstrip().startswith("["):
            try:
                msgs = json.loads(p)
            except json.JSONDecodeError:
                msgs = [{"role": "user", "content": p}]
        elif isinstance(p, str):
            msgs = [{"role": "user", "content": p}]
        elif isinstance(p, (list, np.ndarray)):
            msgs = list(p)
        else:
            raise DataError(f"{fname} row {i}: 'prompt' must be a string or a list of messages")
        check_messages(msgs, where=f"{fname} row {i}")
        for t, col in ((ct, "chosen_text"), (rt, "rejected_text")):
            if not isinstance(t, str):
                raise DataError(f"{fname} row {i}: '{col}' must be a string, got {type(t).__name__}")
        key = json.dumps(msgs, sort_keys=True)
        pid = key_to_id.setdefault(key, len(key_to_id))
        prompts[str(pid)] = msgs
        for row, t in ((chosen[i], ct), (rejected[i], rt)):
            if text_of_row[row] is not None and (text_of_row[row] != t or prompt_of_row[row] != pid):
                raise DataError(f"{fname} row {i}: feature row {row} is shared by different texts")
            text_of_row[row] = t
            prompt_of_row[row] = pid
    responses = responses.copy()
    responses["prompt_id"] = prompt_of_row
    responses["text"] = text_of_row
    return prompts, responses

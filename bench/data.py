"""The data model: pairs, responses, prompts and the embedding view.

A :class:`Dataset` is normalised so that text and features are stored once:

* ``pairs`` — one row per pairwise judgement: ``user``, ``group`` (the unit never split across
  train and test), ``pair_id``, ``chosen`` and ``rejected`` (row numbers into ``responses`` and the
  feature matrix), ``source_split`` (``train``/``test`` for datasets whose own split decides the
  halves) and, on synthetic data, ``true_chosen``/``true_rejected`` (the user's true reward of each
  response, used only by the oracle).
* ``responses`` — one row per distinct (prompt, response) text: ``prompt_id``, ``text`` and
  optionally ``rm_score`` (the reward model's own score of that text).
* ``prompts`` — ``prompt_id`` → list of chat messages ``{"role", "content"}``.
* ``features`` — a float16 matrix, one row per response row, memory-mapped; methods read it in
  float32 chunks through :class:`Features`.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import DataError

PAIR_COLUMNS = ("user", "group", "pair_id", "chosen", "rejected", "source_split")
SPLIT_STYLES = ("group", "source")
CAPABILITIES = ("features", "prompt_features", "text", "rm_scores", "oracle", "llm", "gpu")


class Features:
    """Read-only view of a (rows × dim) feature matrix stored in float16, computed in float32.

    The array is usually a ``np.memmap``; every accessor works in chunks so that no method needs
    more than a chunk of float32 beyond what it keeps.
    """

    def __init__(self, array: np.ndarray, chunk_rows: int = 4096):
        if array.ndim != 2:
            raise DataError(f"feature matrix must be 2-D (rows × dim), got shape {array.shape}", hint="store one feature vector per row")
        self.array = array
        self.chunk_rows = chunk_rows

    @property
    def n_rows(self) -> int:
        return int(self.array.shape[0])

    @property
    def dim(self) -> int:
        return int(self.array.shape[1])

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)

    def take(self, rows: np.ndarray) -> np.ndarray:
        """float32 copy of the given rows (in the given order)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.dim), dtype=np.float32)
        ascending = len(rows) < 2 or bool((np.diff(rows) >= 0).all())
        for start in range(0, len(rows), self.chunk_rows):
            sl = slice(start, start + self.chunk_rows)
            idx = rows[sl]
            if ascending:
                _to_float32(self.array[idx], out[sl])
            else:
                # Reading sorted rows from a memmap is much faster than random order.
                order = np.argsort(idx, kind="stable")
                block = np.empty((len(idx), self.dim), dtype=np.float32)
                _to_float32(self.array[idx[order]], block)
                out[sl][order] = block
        return out

    def tensor(self, rows: np.ndarray, device: str = "cpu"):
        import torch

        return torch.from_numpy(self.take(rows)).to(device)

    def iter_chunks(self, rows: np.ndarray | None = None) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield (output slice, float32 block) over ``rows`` (all rows when None).

        The block is a reused buffer: consume it before asking for the next one.
        """
        n = self.n_rows if rows is None else len(rows)
        buf = np.empty((min(n, self.chunk_rows), self.dim), dtype=np.float32)
        ascending = rows is None or len(rows) < 2 or bool((np.diff(rows) >= 0).all())
        for start in range(0, n, self.chunk_rows):
            sl = slice(start, min(n, start + self.chunk_rows))
            block = buf[: sl.stop - sl.start]
            if rows is None:
                _to_float32(np.asarray(self.array[sl]), block)
            elif ascending:
                _to_float32(self.array[rows[sl]], block)
            else:
                block[...] = self.take(rows[sl])
            yield sl, block

    def diff(self, chosen: np.ndarray, rejected: np.ndarray) -> np.ndarray:
        """float32 ``features[chosen] - features[rejected]``, built chunk by chunk."""
        chosen = np.asarray(chosen, dtype=np.int64)
        rejected = np.asarray(rejected, dtype=np.int64)
        out = np.empty((len(chosen), self.dim), dtype=np.float32)
        for start in range(0, len(chosen), self.chunk_rows):
            sl = slice(start, start + self.chunk_rows)
            out[sl] = self.take(chosen[sl])
            out[sl] -= self.take(rejected[sl])
        return out

    def project(self, matrix: np.ndarray, rows: np.ndarray | None = None) -> np.ndarray:
        """``features[rows] @ matrix`` in float32, chunked. ``matrix`` is (dim, k) or (dim,)."""
        matrix = np.asarray(matrix, dtype=np.float32)
        vec = matrix.ndim == 1
        m = matrix[:, None] if vec else matrix
        n = self.n_rows if rows is None else len(rows)
        out = np.empty((n, m.shape[1]), dtype=np.float32)
        for sl, block in self.iter_chunks(rows):
            out[sl] = block @ m
        return out[:, 0] if vec else out

    def check_finite(self, rows: np.ndarray | None = None) -> np.ndarray:
        """Row numbers (of the matrix) holding NaN or Inf values, among ``rows`` (all when None)."""
        bad = []
        if rows is None:
            for start in range(0, self.n_rows, self.chunk_rows):
                block = self.array[start : start + self.chunk_rows]
                ok = np.isfinite(block).all(axis=1)
                if not ok.all():
                    bad.append(start + np.flatnonzero(~ok))
        else:
            rows = np.unique(np.asarray(rows, dtype=np.int64))
            for start in range(0, len(rows), self.chunk_rows):
                idx = rows[start : start + self.chunk_rows]
                ok = np.isfinite(self.array[idx]).all(axis=1)
                if not ok.all():
                    bad.append(idx[~ok])
        return np.concatenate(bad) if bad else np.empty(0, dtype=np.int64)


def _to_float32(src: np.ndarray, dst: np.ndarray) -> None:
    """Convert a float16/float32 block into ``dst`` (torch's vectorised cast is ~10× NumPy's)."""
    if src.dtype == np.float32:
        dst[...] = src
        return
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        dst[...] = src
        return
    torch.from_numpy(dst).copy_(torch.from_numpy(np.ascontiguousarray(src)))


@dataclass
class DatasetInfo:
    """What a method may know about the dataset it runs on (no labels, no split)."""

    name: str
    family: str
    split_by: str
    dim: int | None
    capabilities: frozenset[str]
    n_users: int
    n_pairs: int


@dataclass
class Dataset:
    name: str
    pairs: pd.DataFrame
    responses: pd.DataFrame
    prompts: dict[str, list[dict[str, str]]] | None = None
    features: Features | None = None
    # Optional: one feature row per prompt (the templated prompt alone), indexed by the integer
    # ``responses.prompt_id``; needed by prompt-conditioned methods such as PAL-B.
    prompt_features: Features | None = None
    split_by: str = "group"
    family: str = "generic"
    fingerprint: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # ------------------------------------------------------------------ derived views
    def arrays(self) -> dict[str, np.ndarray]:
        """Column arrays used by the engine (computed once): group codes, row numbers, ids."""
        cache = self.__dict__.setdefault("_arrays", {})
        if not cache:
            cache["group_code"] = pd.factorize(self.pairs["group"], sort=False)[0].astype(np.int64)
            cache["pair_id"] = self.pairs["pair_id"].astype(str).to_numpy(dtype=object)
            from bench.hashing import id_hashes

            cache["pair_hash"] = id_hashes(cache["pair_id"])
            cache["user_hash"] = id_hashes(self.pairs["user"].astype(str).to_numpy(dtype=object))
            cache["chosen"] = self.pairs["chosen"].to_numpy(dtype=np.int64)
            cache["rejected"] = self.pairs["rejected"].to_numpy(dtype=np.int64)
            if {"true_chosen", "true_rejected"} <= set(self.pairs.columns):
                cache["true_chosen"] = self.pairs["true_chosen"].to_numpy(dtype=np.float64)
                cache["true_rejected"] = self.pairs["true_rejected"].to_numpy(dtype=np.float64)
        return cache

    @property
    def rm_score(self) -> np.ndarray | None:
        if "rm_score" not in self.responses.columns:
            return None
        return self.responses["rm_score"].to_numpy(dtype=np.float32)

    @property
    def has_text(self) -> bool:
        return (
            "text" in self.responses.columns
            and self.prompts is not None
            and bool(self.responses["text"].notna().all())
        )

    @property
    def capabilities(self) -> frozenset[str]:
        caps = set()
        if self.features is not None:
            caps.add("features")
        if self.prompt_features is not None:
            caps.add("prompt_features")
        if self.has_text:
            caps.add("text")
        if self.rm_score is not None:
            caps.add("rm_scores")
        if {"true_chosen", "true_rejected"} <= set(self.pairs.columns):
            caps.add("oracle")
        return frozenset(caps)

    def info(self) -> DatasetInfo:
        return DatasetInfo(
            name=self.name,
            family=self.family,
            split_by=self.split_by,
            dim=None if self.features is None else self.features.dim,
            capabilities=self.capabilities,
            n_users=int(self.pairs["user"].nunique()),
            n_pairs=len(self.pairs),
        )

    def summary(self) -> dict[str, Any]:
        per_user = self.pairs.groupby("user", sort=False).size()
        return {
            "dataset": self.name,
            "users": int(len(per_user)),
            "pairs": int(len(self.pairs)),
            "groups": int(self.pairs["group"].nunique()),
            "pairs_per_user_mean": float(per_user.mean()) if len(per_user) else 0.0,
            "pairs_per_user_min": int(per_user.min()) if len(per_user) else 0,
            "pairs_per_user_max": int(per_user.max()) if len(per_user) else 0,
            "responses": int(len(self.responses)),
            "dim": None if self.features is None else self.features.dim,
            "split_by": self.split_by,
            "capabilities": sorted(self.capabilities),
            "dropped": self.meta.get("dropped", {}),
        }

    def messages(self, row: int) -> list[dict[str, str]]:
        """The chat of one response row: its prompt's messages followed by the response."""
        if self.prompts is None or "text" not in self.responses.columns:
            raise DataError(f"dataset '{self.name}' has no text")
        r = self.responses.iloc[int(row)]
        return [*self.prompts[str(r["prompt_id"])], {"role": "assistant", "content": str(r["text"])}]

    # ------------------------------------------------------------------ validation
    def validate(self) -> "Dataset":
        validate_pairs(self.pairs, n_rows=len(self.responses), split_by=self.split_by, where=self.name)
        if self.features is not None and self.features.n_rows != len(self.responses):
            raise DataError(
                f"{self.name}: the feature matrix has {self.features.n_rows} rows but there are "
                f"{len(self.responses)} responses",
                hint="features must hold exactly one row per response row (chosen/rejected index)",
            )
        if self.prompt_features is not None:
            pid = self.responses["prompt_id"].to_numpy()
            if not np.issubdtype(pid.dtype, np.integer) or pid.min() < 0 or pid.max() >= self.prompt_features.n_rows:
                raise DataError(
                    f"{self.name}: prompt features need integer prompt_id values in [0, {self.prompt_features.n_rows})"
                )
        if "rm_score" in self.responses.columns:
            rm = self.responses["rm_score"].to_numpy(dtype=np.float64)
            bad = np.flatnonzero(~np.isfinite(rm))
            if len(bad):
                raise DataError(
                    f"{self.name}: rm_score is NaN/Inf in response rows {_preview(bad)}",
                    hint="drop those responses or recompute their reward-model scores",
                )
        if self.prompts is not None and "prompt_id" in self.responses.columns:
            missing = set(self.responses["prompt_id"].astype(str)) - set(self.prompts)
            if missing:
                raise DataError(
                    f"{self.name}: responses reference unknown prompt ids {_preview(sorted(missing))}"
                )
            for pid, msgs in self.prompts.items():
                check_messages(msgs, where=f"{self.name} prompt {pid}")
        return self


def _preview(items, k: int = 8) -> str:
    items = list(items)
    head = ", ".join(str(x) for x in items[:k])
    return f"[{head}{', …' if len(items) > k else ''}] ({len(items)} in all)"


def check_messages(msgs: Any, where: str) -> None:
    """Every prompt is a list of {role, content} messages whose content is a str (never a list)."""
    if not isinstance(msgs, list):
        raise DataError(f"{where}: messages must be a list, got {type(msgs).__name__}", hint='a prompt is a list of {"role", "content"} messages')
    for i, m in enumerate(msgs):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            raise DataError(f"{where}: message {i} must be a dict with 'role' and 'content'", hint='write each message as {"role": "user", "content": "..."}')
        if not isinstance(m["content"], str):
            raise DataError(
                f"{where}: message {i} content is {type(m['content']).__name__}, not str",
                hint="a message's content must be a single string (a list would leak format into the RM)",
            )
        if m["role"] not in ("system", "user", "assistant"):
            raise DataError(f"{where}: message {i} has role {m['role']!r}; use system/user/assistant", hint="rename the role (e.g. model → assistant)")


def validate_pairs(pairs: pd.DataFrame, n_rows: int, split_by: str, where: str) -> None:
    missing = [c for c in PAIR_COLUMNS if c not in pairs.columns]
    if missing:
        raise DataError(f"{where}: pairs table lacks columns {missing}", hint=f"required: {list(PAIR_COLUMNS)}")
    if split_by not in SPLIT_STYLES:
        raise DataError(f"{where}: split_by must be one of {SPLIT_STYLES}, got {split_by!r}", hint="group or source")
    if len(pairs) == 0:
        raise DataError(f"{where}: the dataset has no pairs", hint="check the files and the dataset options")
    for col in ("user", "group", "pair_id"):
        nulls = np.flatnonzero(pairs[col].isna().to_numpy())
        if len(nulls):
            raise DataError(f"{where}: column '{col}' is empty in rows {_preview(nulls)}", hint=f"give every pair a {col}")
    dup = pairs["pair_id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise DataError(
            f"{where}: duplicate pair_id values {_preview(pairs['pair_id'][dup].unique())}",
            hint="every pair needs a unique pair_id",
        )
    for col in ("chosen", "rejected"):
        if not pd.api.types.is_integer_dtype(pairs[col]):
            raise DataError(f"{where}: column '{col}' must hold integer row numbers, got {pairs[col].dtype}", hint="chosen/rejected index rows of the feature matrix")
        v = pairs[col].to_numpy()
        bad = np.flatnonzero((v < 0) | (v >= n_rows))
        if len(bad):
            raise DataError(
                f"{where}: '{col}' row numbers out of range [0, {n_rows}) in pairs {_preview(bad)}",
                hint="chosen/rejected index rows of the feature matrix / responses table",
            )
    same = np.flatnonzero(pairs["chosen"].to_numpy() == pairs["rejected"].to_numpy())
    if len(same):
        raise DataError(f"{where}: chosen == rejected in pairs {_preview(same)}", hint="a pair compares two different responses; drop those pairs")
    # A group is the unit never split across halves: it must belong to a single user.
    users_per_group = pairs.groupby("group", sort=False)["user"].nunique()
    shared = users_per_group.index[users_per_group.to_numpy() > 1]
    if len(shared):
        raise DataError(
            f"{where}: groups shared by several users {_preview(shared)}",
            hint="make group ids unique per user (e.g. prefix them with the user id)",
        )
    if split_by == "source":
        ss = pairs["source_split"].astype(str)
        bad = np.flatnonzero(~ss.isin(["train", "test"]).to_numpy())
        if len(bad):
            raise DataError(
                f"{where}: source_split must be 'train' or 'test' for split_by=source; bad rows {_preview(bad)}"
            )
        per_group = pairs.groupby("group", sort=False)["source_split"].nunique()
        if (per_group > 1).any():
            raise DataError(f"{where}: a group spans both source splits: {_preview(per_group.index[per_group > 1])}", hint="give each group one split value, or use split_by: group")
    if {"true_chosen", "true_rejected"} <= set(pairs.columns):
        t = pairs[["true_chosen", "true_rejected"]].to_numpy(dtype=np.float64)
        if not np.isfinite(t).all():
            raise DataError(f"{where}: true rewards contain NaN/Inf", hint="regenerate the dataset")


def messages_to_json(msgs: list[dict[str, str]]) -> str:
    return json.dumps(msgs, ensure_ascii=False, separators=(",", ":"))


def load_features(path: Path, mmap: bool = True) -> np.ndarray:
    """Open a feature matrix from ``.npy`` (memory-mapped, no pickle) or ``.safetensors``."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"feature file not found: {path}", hint="check the path, or re-create the features")
    if path.suffix == ".npy":
        try:
            arr = np.load(path, mmap_mode="r" if mmap else None, allow_pickle=False)
        except MemoryError:
            raise
        except Exception as e:  # a damaged header raises ValueError, but also SyntaxError, TokenError, TypeError
            what = e if isinstance(e, (ValueError, OSError, EOFError)) else f"{type(e).__name__}: {e}"
            raise DataError(
                f"cannot read feature file {path}: {what}",
                hint="the file is truncated or not a .npy array; re-create it with numpy.save",
            ) from None
        return arr
    if path.suffix == ".safetensors":
        try:
            from safetensors.numpy import load_file
        except ImportError:
            raise DataError(
                "reading .safetensors needs the 'safetensors' package",
                hint="pip install safetensors, or save the features as .npy",
            ) from None
        try:
            tensors = load_file(str(path))
        except Exception as e:  # safetensors raises its own error types
            hint = "the file is truncated or not a safetensors file; save it again with safetensors.numpy.save_file"
            if "bfloat16" in str(e):
                hint = "bfloat16 cannot be read without torch; convert the tensor to float16 or float32 before saving"
            raise DataError(f"cannot read feature file {path}: {e}", hint=hint) from None
        if "features" not in tensors:
            raise DataError(f"{path}: no tensor named 'features' (found {sorted(tensors)})", hint="save the matrix under the name 'features'")
        return tensors["features"]
    raise DataError(f"unsupported feature file type: {path.name}", hint="use features.npy or features.safetensors")

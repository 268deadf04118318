"""Stable hashes and seeds.

Nothing here depends on ``PYTHONHASHSEED`` or on the order of a set: ids are hashed with BLAKE2b,
dictionaries are serialised canonically, and per-item random keys come from a counter-based
mixer so that a user's shuffle depends only on (seed, user id), never on who else is in the data.
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def canonical_json(obj: Any) -> str:
    """JSON with sorted keys and no insignificant whitespace; floats keep full precision."""

    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, Path):
            return str(o)
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"cannot serialise {type(o).__name__}")

    def check(o: Any) -> Any:
        if isinstance(o, float) and not math.isfinite(o):
            raise ValueError("non-finite float in canonical JSON")
        return o

    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=default, allow_nan=False)


def digest(data: bytes | str, size: int = 32) -> str:
    if isinstance(data, str):
        data = data.encode()
    return hashlib.blake2b(data, digest_size=size).hexdigest()


def hash_obj(obj: Any, size: int = 8) -> str:
    """Short hex key of a JSON-serialisable object (16 hex chars by default)."""
    return digest(canonical_json(obj), size=size)


def file_digest(path: str | Path, chunk: int = 1 << 22) -> str:
    h = hashlib.blake2b(digest_size=32)
    with open(path, "rb") as f:
        while True:
            block = f.read(chunk)
            if not block:
                break
            h.update(block)
    return h.hexdigest()


def array_digest(*arrays: np.ndarray) -> str:
    """Digest of arrays' dtypes, shapes and bytes (C order)."""
    h = hashlib.blake2b(digest_size=32)
    for a in arrays:
        a = np.ascontiguousarray(a)
        if a.dtype == object:
            h.update(canonical_json([str(x) for x in a.ravel()]).encode())
        else:
            h.update(str(a.dtype).encode() + str(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


def id_hashes(ids: np.ndarray | list[str]) -> np.ndarray:
    """uint64 hash of each id string (stable across processes and platforms)."""
    ids = np.asarray(ids, dtype=object)
    uniq, inverse = np.unique(ids.astype(str), return_inverse=True)
    h = np.fromiter(
        (int.from_bytes(hashlib.blake2b(u.encode(), digest_size=8).digest(), "little") for u in uniq),
        dtype=np.uint64,
        count=len(uniq),
    )
    return h[inverse]


def mix64(*parts: np.ndarray | int) -> np.ndarray:
    """SplitMix64-style mixing of uint64 words; vectorised over array arguments."""
    with np.errstate(over="ignore"):
        x = np.uint64(0x9E3779B97F4A7C15)
        acc = None
        for p in parts:
            p = np.asarray(p).astype(np.uint64)
            z = (p + x) if acc is None else (acc ^ (p + x + (acc << np.uint64(6)) + (acc >> np.uint64(2))))
            z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
            z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
            acc = z ^ (z >> np.uint64(31))
        return acc & _MASK64


def tag(name: str) -> int:
    """A uint64 constant naming a purpose, so different uses of one seed never collide."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little")

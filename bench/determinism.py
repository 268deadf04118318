"""Determinism: what in a result file may differ between two runs of one command, and ``--deterministic``.

The same ``bench run`` command on the same machine writes the same results: every cell's rows and
its metadata are identical except the fields listed here as *volatile* — wall-clock measurements
and where the cell was computed. This module is the one place that says which fields those are;
:func:`compare_results` compares two results directories with everything else included, and the
test ``tests/test_determinism.py`` runs every registered method twice and demands no difference.

Volatile fields of a cell file (``RESULTS/cells/<key>.parquet``):

* metadata ``finished_at`` (epoch seconds), ``timing`` (fit/adapt/score seconds, and how many cells
  shared the fit), ``provenance.worker`` (``host:pid`` of the process that computed the cell);
* metadata ``rows_hash`` — a hash of the rows, so it changes with a volatile row column; the rows
  themselves are compared column by column instead; likewise ``meta_hash``, the integrity hash
  of the metadata itself (it covers the timings), whose other fields are compared one by one;
* inside ``method_meta``, every key named ``seconds`` or ending in ``_seconds`` (a method's own
  timings, e.g. SynthesizeMe's per-stage LLM seconds);
* row columns whose names end in ``_seconds`` (e.g. ``llm_seconds``). A method that adds a timing
  column must name it so; any other column is compared exactly.

Everything else — the cell dict, parameters, provenance (package versions, git commit, platform,
CPU count, torch threads, executor, ``deterministic``), parameter counts, all other rows — must be
identical, and every other file in the results directory (the split files) byte-identical.

``--deterministic`` (``bench run``/``bench paper``) asks torch for deterministic kernels on GPUs:
:func:`deterministic_mode` sets ``torch.use_deterministic_algorithms(True)``,
``CUBLAS_WORKSPACE_CONFIG=:4096:8``, ``torch.backends.cudnn.benchmark = False`` and
``cudnn.deterministic = True`` in the worker process that computes the cells (every executor runs
cells through :func:`bench.executors.run_unit`, which enters it), and restores the previous
settings afterwards. Each cell records ``provenance.deterministic`` (the flag) and
``provenance.torch_deterministic`` (what torch reported while the cell was computed; None when the
method never imported torch).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd

# ---------------------------------------------------------------------------- volatile fields

VOLATILE_META: tuple[tuple[str, ...], ...] = (
    ("finished_at",),
    ("timing",),
    ("provenance", "worker"),
    ("rows_hash",),
    ("meta_hash",),
)
"""Paths into a cell's metadata that are removed before two runs are compared."""

VOLATILE_METHOD_META_KEYS = ("seconds",)
VOLATILE_SUFFIX = "_seconds"
"""Inside ``method_meta``: keys equal to one of ``VOLATILE_METHOD_META_KEYS`` or ending in
``VOLATILE_SUFFIX`` are timings. Row columns ending in ``VOLATILE_SUFFIX`` are timings too."""

CACHE_ACCOUNTING_COLUMNS = ("llm_calls", "llm_cache_hits", "llm_prompt_tokens", "llm_completion_tokens")
CACHE_ACCOUNTING_KEYS = ("backend_calls", "cache_hits", "prompt_tokens", "completion_tokens")
"""What an LLM method's cost accounting says about *this* run: requests answered by the backend
versus the response cache, and the tokens the backend processed. A rerun against a warm response
cache records 0 calls — its scores and every other field are those of the first run. These are
compared unless ``warm_cache=True`` (the second of two runs sharing ``$BENCH_CACHE``)."""

CUBLAS_WORKSPACE = ":4096:8"


def is_volatile_column(name: str) -> bool:
    return str(name).endswith(VOLATILE_SUFFIX)


def _drop_timing_keys(obj: Any, also: tuple[str, ...] = ()) -> Any:
    if isinstance(obj, dict):
        return {
            k: _drop_timing_keys(v, also)
            for k, v in obj.items()
            if not (k in VOLATILE_METHOD_META_KEYS or str(k).endswith(VOLATILE_SUFFIX) or k in also)
        }
    if isinstance(obj, list):
        return [_drop_timing_keys(v, also) for v in obj]
    return obj


def stable_meta(meta: dict[str, Any], warm_cache: bool = False) -> dict[str, Any]:
    """A cell's metadata without its volatile fields (a deep copy); ``warm_cache`` also drops the
    LLM cost accounting (:data:`CACHE_ACCOUNTING_KEYS`)."""
    out = json.loads(json.dumps(meta))
    for path in VOLATILE_META:
        node = out
        for k in path[:-1]:
            node = node.get(k) if isinstance(node, dict) else None
            if node is None:
                break
        if isinstance(node, dict):
            node.pop(path[-1], None)
    if "method_meta" in out:
        out["method_meta"] = _drop_timing_keys(out["method_meta"], CACHE_ACCOUNTING_KEYS if warm_cache else ())
    return out


def stable_rows(rows: pd.DataFrame, warm_cache: bool = False) -> pd.DataFrame:
    """A cell's rows without volatile columns (and, with ``warm_cache``, the LLM cost accounting)."""
    drop = set(CACHE_ACCOUNTING_COLUMNS) if warm_cache else set()
    return rows[[c for c in rows.columns if not is_volatile_column(c) and c not in drop]].reset_index(drop=True)


# ---------------------------------------------------------------------------- comparison


def _flat(obj: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(_flat(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: obj}


def _text(v: Any) -> str:
    """A value as text that tells every float apart (17 significant digits; NaN equals NaN)."""
    if isinstance(v, float):
        return format(v, ".17g")
    if hasattr(v, "dtype") and getattr(v.dtype, "kind", "") == "f":
        return format(float(v), ".17g")
    return repr(v)


def compare_cells(a: Path, b: Path, warm_cache: bool = False) -> list[str]:
    """Differences between two cell files, volatile fields left out (empty: the same result)."""
    import pyarrow.parquet as pq

    from bench.store import META_KEY, table_to_frame

    ta, tb = pq.read_table(a), pq.read_table(b)
    ma = json.loads((ta.schema.metadata or {}).get(META_KEY, b"{}"))
    mb = json.loads((tb.schema.metadata or {}).get(META_KEY, b"{}"))
    out = []
    fa, fb = _flat(stable_meta(ma, warm_cache)), _flat(stable_meta(mb, warm_cache))
    for k in sorted(set(fa) | set(fb)):
        if fa.get(k, "<absent>") != fb.get(k, "<absent>"):
            out.append(f"metadata {k}: {fa.get(k, '<absent>')!r} ≠ {fb.get(k, '<absent>')!r}")
    ra, rb = table_to_frame(ta), table_to_frame(tb)
    if list(ra.columns) != list(rb.columns):
        out.append(f"columns {list(ra.columns)} ≠ {list(rb.columns)}")
    ra, rb = stable_rows(ra, warm_cache), stable_rows(rb, warm_cache)
    if len(ra) != len(rb):
        out.append(f"{len(ra)} rows ≠ {len(rb)} rows")
        return out
    for c in ra.columns:
        if c not in rb.columns:
            continue
        va, vb = [_text(v) for v in ra[c]], [_text(v) for v in rb[c]]
        bad = [i for i, (x, y) in enumerate(zip(va, vb)) if x != y]
        if bad:
            i = bad[0]
            out.append(f"column {c}: {len(bad)} of {len(ra)} rows differ (first: row {i}: {va[i]} ≠ {vb[i]})")
    return out


def compare_results(a: str | Path, b: str | Path, warm_cache: bool = False) -> list[str]:
    """Differences between two results directories (cells compared by :func:`compare_cells`, every
    other file byte by byte; claims, quarantine and reports left out). Empty: the same results."""
    a, b = Path(a), Path(b)
    skip = ("claims", "quarantine", "reports")

    def files(root: Path) -> set[Path]:
        return {p.relative_to(root) for p in root.rglob("*") if p.is_file() and p.relative_to(root).parts[0] not in skip}

    fa, fb = files(a), files(b)
    out = [f"only in {a}: {p}" for p in sorted(fa - fb)] + [f"only in {b}: {p}" for p in sorted(fb - fa)]
    for rel in sorted(fa & fb):
        if rel.parts[0] == "cells" and rel.suffix == ".parquet":
            out.extend(f"{rel}: {d}" for d in compare_cells(a / rel, b / rel, warm_cache))
        elif (a / rel).read_bytes() != (b / rel).read_bytes():
            out.append(f"{rel}: files differ")
    return out


# ---------------------------------------------------------------------------- --deterministic


def torch_deterministic() -> bool | None:
    """Whether torch's deterministic algorithms are on in this process (None: torch not imported)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    return bool(torch.are_deterministic_algorithms_enabled())


@contextlib.contextmanager
def deterministic_mode(enabled: bool) -> Iterator[None]:
    """Within: torch's deterministic algorithms, a fixed cuBLAS workspace, no cuDNN autotuning.

    ``enabled`` False does nothing (torch's defaults apply). The previous settings are restored on
    exit, so an in-process run does not leak the mode into later work.
    """
    if not enabled:
        yield
        return
    old_env = os.environ.get("CUBLAS_WORKSPACE_CONFIG")
    # cuBLAS reads this when a handle is created: before the first CUDA matmul in this process
    os.environ["CUBLAS_WORKSPACE_CONFIG"] = CUBLAS_WORKSPACE
    try:
        import torch
    except ImportError:  # nothing else to set: methods without torch are deterministic on their own
        torch = None
    saved = None
    if torch is not None:
        saved = (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
            torch.backends.cudnn.benchmark,
            torch.backends.cudnn.deterministic,
        )
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
    try:
        yield
    finally:
        if torch is not None and saved is not None:
            torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
            torch.backends.cudnn.benchmark = saved[2]
            torch.backends.cudnn.deterministic = saved[3]
        if old_env is None:
            os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
        else:
            os.environ["CUBLAS_WORKSPACE_CONFIG"] = old_env

"""The extraction loop behind ``bench embed``.

1. Distinct texts only: response rows (or prompts) with the same conversation hash are embedded
   once and share a feature row.
2. A fixed processing order, longest first (by characters, known without a tokenizer), cut into
   chunks; within a chunk texts are tokenised, sorted by token length and packed into batches under
   a token budget (``batch_tokens`` counts padded tokens), so padding stays small and an
   out-of-memory batch shows up in the first minutes, not the last.
3. Before the first chunk of a run is written, a sample of its texts (the longest, the shortest and
   evenly spread ones) is embedded the official way — one unpadded text,
   ``hidden_states[-1][0, -1]`` and ``logits[0][0]`` — and compared with the batched results; then
   ``score(feature) ≈ logit`` is checked on the official features. Any miss stops the extraction
   loudly, before anything is written.
4. Each chunk is written atomically; an interrupted run resumes at the first missing chunk; the
   final arrays are assembled only when every chunk is present, ``score(feature) ≈ logit`` is
   checked on every stored feature, and the manifest is written last.
5. Each chunk is claimed before it is embedded (:mod:`bench.claims`), so several processes —
   data-parallel workers on several GPUs, or machines sharing the cache — split one extraction;
   see :mod:`bench.features.parallel`.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data import Dataset
from bench.errors import BenchError, DataError
from bench.claims import ClaimDir
from bench.features.cache import FILES, ChunkStore, finalize, model_dir, read_manifest, remove_leftovers

ProgressFn = Callable[[int, int], None]


class ExtractionCheckError(BenchError):
    """Batched features or logits disagree with the official one-text-at-a-time recipe."""


def items_of(ds: Dataset, kind: str) -> tuple[list[list[dict[str, str]]], np.ndarray, np.ndarray]:
    """(messages of each distinct text, its hash, row → item index)."""
    from bench.datasets.textdata import prompt_hashes, response_messages, text_hashes

    if not ds.has_text:
        raise DataError(f"{ds.name} has no text to embed", hint="bench embed works on text datasets (reddit, prism, or a directory with prompt/chosen_text/rejected_text)")
    if kind == "response":
        hashes = text_hashes(ds)
        codes, uniques = pd.factorize(pd.Series(hashes, dtype=object), sort=False)
        first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
        msgs = [response_messages(ds, int(r)) for r in first]
    elif kind == "prompt":
        hashes = prompt_hashes(ds)
        codes, uniques = pd.factorize(pd.Series(hashes, dtype=object), sort=False)
        first = pd.Series(np.arange(len(codes))).groupby(codes).first().to_numpy()
        msgs = [ds.prompts[str(int(r))] for r in first]
    else:
        raise ValueError(kind)
    return msgs, np.asarray(uniques, dtype=object), codes.astype(np.int64)


def head_tolerance(low_precision: bool, head: np.ndarray):
    """|score(f) − logit| allowed: float16 storage of f (2⁻¹¹ relative per element, bounded by
    Σ|w||f|) plus, for bf16/fp16 models, the rounding of the logit itself; 1e-3 as MRM's check."""
    w = np.abs(np.asarray(head, dtype=np.float32))

    def tol(f: np.ndarray, logit: np.ndarray) -> np.ndarray:
        f = np.atleast_2d(f)
        t = 1e-3 + 2.0**-10 * (np.abs(f) @ w)
        if low_precision:
            t = t + 2.0**-6 * np.abs(np.asarray(logit, dtype=np.float32))
        return t

    return tol


def sample_positions(n: int, k: int) -> np.ndarray:
    if n == 0 or k <= 0:
        return np.empty(0, dtype=np.int64)
    return np.unique(np.linspace(0, n - 1, num=min(k, n)).round().astype(np.int64))


def check_sample(encoder, reference, ids: list[list[int]], feats: np.ndarray, logits: np.ndarray, low_precision: bool) -> dict[str, float]:
    """Compare batched results with the official recipe on ``ids``; raise on any miss."""
    head = reference.head()
    tol_head = head_tolerance(low_precision, head)
    feat_tol = 5e-2 if low_precision else 2e-3
    worst_rel, worst_logit, worst_head = 0.0, 0.0, 0.0
    for j, x in enumerate(ids):
        f_off, l_off = reference.embed_official(x)
        f_off = np.asarray(f_off, dtype=np.float32)
        h = float(f_off @ head)
        if abs(h - l_off) > float(tol_head(f_off, np.array([l_off]))[0]):
            raise ExtractionCheckError(
                f"score(feature) = {h:.5f} but the model's logit is {l_off:.5f} for a text of {len(x)} tokens",
                hint="the official feature is not the score head's input in this transformers version; nothing was written",
            )
        rel = float(np.linalg.norm(feats[j] - f_off) / max(np.linalg.norm(f_off), 1e-12))
        dl = abs(float(logits[j]) - l_off)
        if rel > feat_tol or dl > float(tol_head(f_off, np.array([l_off]))[0]) + (0.05 * (1 + abs(l_off)) if low_precision else 0.0):
            raise ExtractionCheckError(
                f"batched extraction disagrees with one-at-a-time extraction on a text of {len(x)} tokens: "
                f"relative feature error {rel:.2e} (allowed {feat_tol:.0e}), logit {float(logits[j]):.5f} vs {l_off:.5f}",
                hint="padding or last-token selection is wrong for this model; nothing was written",
            )
        worst_rel, worst_logit, worst_head = max(worst_rel, rel), max(worst_logit, dl), max(worst_head, abs(h - l_off))
    return {"checked": len(ids), "max_feature_rel_err": worst_rel, "max_logit_diff": worst_logit, "max_head_diff": worst_head}


def make_batches(lengths: np.ndarray, batch_tokens: int, batch_size: int, max_pad: float = 0.15) -> list[np.ndarray]:
    """Positions (sorted by length, longest first) grouped so that batch × longest ≤ batch_tokens
    and no text is padded by more than ``max_pad`` of the batch's longest (padding is wasted work:
    on a CPU it costs its full share of time)."""
    order = np.argsort(-lengths, kind="stable")
    batches, cur, cur_max = [], [], 0
    for i in order:
        L = int(lengths[i])
        new_max = max(cur_max, L)
        if cur and ((len(cur) + 1) * new_max > batch_tokens or len(cur) >= batch_size or L < (1 - max_pad) * new_max):
            batches.append(np.array(cur))
            cur, new_max = [], L
        cur.append(int(i))
        cur_max = new_max
    if cur:
        batches.append(np.array(cur))
    return batches


def extract_features(
    ds: Dataset,
    encoder,
    *,
    kind: str = "response",
    chunk_size: int = 1024,
    batch_tokens: int = 16384,
    batch_size: int = 64,
    check_samples: int = 8,
    reference: Callable[[], Any] | Any | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """Extract (or resume) ``kind`` features of ``ds`` with ``encoder``; returns a report.

    A write that fails (disk full, read-only cache) raises :class:`bench.errors.StorageError`
    naming the cache directory; the chunks written so far are kept for the rerun.
    """
    try:
        return _extract_features(
            ds, encoder, kind=kind, chunk_size=chunk_size, batch_tokens=batch_tokens, batch_size=batch_size,
            check_samples=check_samples, reference=reference, force=force, progress=progress, log=log, poll_s=poll_s,
        )
    except OSError as e:
        from bench.errors import storage_error

        raise storage_error(
            e, model_dir(ds, encoder.identity), f"{kind} features", "point BENCH_CACHE at a directory with room (`bench embed --dry-run` prints the size)",
            "the chunks written so far are kept: rerun the same command to resume",
        ) from None


def _extract_features(
    ds: Dataset,
    encoder,
    *,
    kind: str = "response",
    chunk_size: int = 1024,
    batch_tokens: int = 16384,
    batch_size: int = 64,
    check_samples: int = 8,
    reference: Callable[[], Any] | Any | None = None,
    force: bool = False,
    progress: ProgressFn | None = None,
    log: Callable[[str], None] = print,
    poll_s: float = 2.0,
) -> dict[str, Any]:
    """Extract (or resume) ``kind`` features of ``ds`` with ``encoder``; returns a report.

    Several processes may run this on the same dataset and model at once (``bench embed
    --data-parallel N``, or one ``bench embed`` per machine on a shared cache): each claims the
    chunks it embeds (``partial-<kind>/claims/``), so they split the work, and one of them
    assembles the final arrays when every chunk is written.
    """
    if chunk_size < 1 or batch_tokens < 1 or batch_size < 1:
        raise BenchError("--chunk, --batch-tokens and --batch-size must be positive")
    ident = encoder.identity
    root = model_dir(ds, ident)
    root.mkdir(parents=True, exist_ok=True)
    feat_name, idx_name, man_name = FILES[kind]
    if read_manifest(root, kind) is not None:
        if not force:
            if remove_leftovers(root, kind):  # an extraction killed after its manifest was written
                log(f"removed the leftovers of an interrupted extraction in {root}")
            log(f"{kind} features already complete in {root}")
            return {"directory": str(root), "embedded": 0, "complete": True, "cached": True}
        for name in (feat_name, idx_name, man_name):
            (root / name).unlink(missing_ok=True)
    msgs, item_hashes, row_to_item = items_of(ds, kind)
    chars = np.array([sum(len(m["content"]) for m in mm) for mm in msgs], dtype=np.int64)
    order = np.argsort(-chars, kind="stable")
    store = ChunkStore(root, kind, ident, item_hashes, order, chunk_size)
    store.open()
    done = set(store.done_chunks(log))
    n_items = len(item_hashes)
    done_items = sum(len(store.chunk_items(k)) for k in done)
    if done:
        log(f"resuming: {len(done)} of {store.n_chunks} chunks already written")
    if progress:
        progress(done_items, n_items)
    low_precision = getattr(encoder, "dtype_name", "float32") in ("bfloat16", "float16")
    check: dict[str, float] | None = None
    embedded = 0
    tokens = 0
    t0 = time.perf_counter()
    claims = ClaimDir(store.dir / "claims")

    def embed_chunk(k: int) -> None:
        nonlocal check, embedded, tokens
        items = store.chunk_items(k)
        ids = [encoder.tokenize(msgs[i]) for i in items]
        lengths = np.array([len(x) for x in ids], dtype=np.int64)
        if (lengths == 0).any():
            raise DataError(f"{ds.name}: {int((lengths == 0).sum())} texts tokenise to nothing")
        feats = np.empty((len(items), encoder.dim), dtype=np.float32)
        logits = np.empty(len(items), dtype=np.float32)
        for b in make_batches(lengths, batch_tokens, batch_size):
            f, lg = encoder.embed_batch([ids[i] for i in b])
            feats[b] = f
            logits[b] = lg
        if check is None and check_samples > 0:
            pos = np.argsort(-lengths, kind="stable")[sample_positions(len(items), check_samples)]
            ref = reference() if callable(reference) else (reference or encoder)
            check = check_sample(encoder, ref, [ids[i] for i in pos], feats[pos], logits[pos], low_precision)
            log(
                f"check passed on {check['checked']} texts: batched vs one-at-a-time relative feature error ≤ "
                f"{check['max_feature_rel_err']:.1e}, logit difference ≤ {check['max_logit_diff']:.1e}; "
                f"|score(feature) − logit| ≤ {check['max_head_diff']:.1e}"
            )
        store.write(k, feats, logits, lengths)
        embedded += len(items)
        tokens += int(lengths.sum())

    def claim_and_embed(k: int) -> bool:
        """Embed chunk k unless another process holds it; True when it is written (by anyone)."""
        nonlocal done_items
        if not claims.try_claim(f"chunk-{k:05d}"):
            return False
        try:
            # Nobody finished it meanwhile — and nobody assembled everything: the finalizer writes
            # the manifest before it removes the chunks, so a chunk missing for that reason is
            # caught by the second test (a worker that started late must not embed it all again).
            if store.status(k) is not None and read_manifest(root, kind) is None:
                embed_chunk(k)
        finally:
            claims.release(f"chunk-{k:05d}")
        done_items += len(store.chunk_items(k))
        if progress:
            progress(done_items, n_items)
        return True

    # Chunks in order; one that another process (a data-parallel worker, another machine on the
    # same cache) is embedding is skipped, then waited for — and embedded here if its owner dies.
    busy = [k for k in range(store.n_chunks) if k not in done and not claim_and_embed(k)]
    if busy:
        log(f"{len(busy)} chunks are being embedded by another process; waiting for them")
    while busy:
        time.sleep(poll_s)
        if read_manifest(root, kind) is not None:  # another worker already assembled everything
            break
        still = []
        for k in busy:
            if store.status(k) is None:
                done_items += len(store.chunk_items(k))
                if progress:
                    progress(done_items, n_items)
            elif claims.is_live(f"chunk-{k:05d}") or not claim_and_embed(k):
                still.append(k)
        busy = still
    elapsed = time.perf_counter() - t0
    head = encoder.head()
    info = {
        "dataset": ds.name,
        "text_fingerprint": ds.meta.get("text_fingerprint", ds.fingerprint),
        "backend": encoder.backend,
        "dtype": getattr(encoder, "dtype_name", None),
        "trust_remote_code": bool(getattr(encoder, "trust_remote_code", False)),
        "batch_tokens": batch_tokens,
        "batch_size": batch_size,
        "chunk_size": chunk_size,
        "check": check,
        "last_run": {"texts": embedded, "tokens": tokens, "seconds": round(elapsed, 3)},
    }
    # One worker assembles the arrays; the others wait for its manifest (or take over if it dies).
    finalizer = False
    while read_manifest(root, kind) is None:
        if claims.try_claim("finalize"):
            finalizer = True
            break
        time.sleep(poll_s)
    try:
        if finalizer and read_manifest(root, kind) is None:
            finalize(store, row_to_item, head, info, head_tolerance(low_precision, head))
    finally:
        claims.release("finalize")
        if read_manifest(root, kind) is not None and store.dir.exists():
            shutil.rmtree(store.dir, ignore_errors=True)  # a claim dir recreated by a late worker
    return {"directory": str(root), "embedded": embedded, "tokens": tokens, "seconds": elapsed, "complete": True, "cached": False, "check": check, "items": n_items}


def default_reference(encoder, name: str, revision: str | None) -> Callable[[], Any] | None:
    """For vLLM: a lazily loaded transformers encoder of the same model runs the official recipe."""
    if encoder.backend != "vllm":
        return None
    cache: dict[str, Any] = {}

    def make():
        if "ref" not in cache:
            from bench.features.encoders import HFEncoder

            device = getattr(encoder, "device_name", "cuda")  # vLLM's CPU build: the reference runs on the CPU too
            cache["ref"] = HFEncoder(name, revision=revision, device=device, dtype=encoder.dtype_name,
                                     trust_remote_code=getattr(encoder, "trust_remote_code", False))
        return cache["ref"]

    return make


def features_path(ds: Dataset, ident) -> Path:
    return model_dir(ds, ident)

"""The feature cache: float16 arrays + Parquet index, keyed by dataset, model and chat template.

Layout under ``$BENCH_CACHE/features/``::

    <dataset>-<text fingerprint>/                     one per dataset content + filters
      <model slug>-<key>/                             key = hash(model id, revision, template hash, feature version)
        manifest.json                                 written LAST: the only mark of a complete extraction
        features.npy        (rows × dim) float16      one row per dataset response row (memory-mapped)
        index.parquet       row, text_hash, logit, n_tokens
        head.npy            the score head's weight (float32), for the score(feature) ≈ logit check
        prompt_manifest.json / prompt_features.npy / prompt_index.parquet   (optional, for PAL-B)
        partial-response/   while an extraction runs: plan.json + chunk-NNNNN.npy/.parquet

A chunk counts as written only when its ``.parquet`` (written after its ``.npy``, atomically) exists
and records the ``.npy``'s digest; a truncated or edited chunk is detected and recomputed. The
assembled ``features.npy`` is verified against the manifest's digest on first use (then per size
and mtime). Nothing here imports torch.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data import Dataset, Features, _preview
from bench.errors import DataError
from bench.hashing import array_digest, file_digest, hash_obj

FEATURE_VERSION = "1"  # final-norm last-token hidden state of the templated conversation, no generation prompt
FILES = {
    "response": ("features.npy", "index.parquet", "manifest.json"),
    "prompt": ("prompt_features.npy", "prompt_index.parquet", "prompt_manifest.json"),
}
# Expected-cost model for messages (stated, not measured here): one forward pass costs about
# 2 × parameters FLOPs per token; an A100/H100-class GPU sustains roughly 1e14 FLOP/s in bf16.
ASSUMED_FLOPS = 1.0e14
PARAMS_8B = 8.0e9
# On a CPU (float32, batched): about 2.5e10 FLOP/s per core sustained — measured once: SmolLM2-135M
# embedded text-prefs (34,880 tokens) in 185 s on 2 shared cores (load average 3.5).
ASSUMED_CPU_FLOPS_PER_CORE = 2.5e10


def model_scale(model: str | None) -> tuple[float, int, str]:
    """(parameters, hidden size, how they were found) of a feature model, without loading it.

    Known names (the Skywork 8B models, the SmolLM2-135M stand-in), a local directory's
    ``config.json``, a Hub id naming its size (``…-1.5B``), else an 8B model is assumed.
    """

    if model is None:
        return PARAMS_8B, 4096, "an 8B reward model"
    text = str(model)
    low = text.lower()
    if low in ("smollm2",) or "smollm2-135m" in low:
        return 1.35e8, 576, "SmolLM2-135M (135M parameters)"
    path = Path(text).expanduser()
    cfg_file = path / "config.json" if path.is_dir() else None
    if cfg_file is not None and cfg_file.is_file():
        try:
            cfg = json.loads(cfg_file.read_text())
            h, n_layers = int(cfg["hidden_size"]), int(cfg["num_hidden_layers"])
            inter, vocab = int(cfg.get("intermediate_size", 4 * h)), int(cfg.get("vocab_size", 32000))
            params = n_layers * (4 * h * h + 3 * h * inter) + vocab * h
            return float(params), h, f"{path.name} (≈{params / 1e9:.2g}B parameters from its config.json)"
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if low in ("v1", "v2") or "skywork-reward" in low and "8b" in low:
        return PARAMS_8B, 4096, "an 8B reward model"
    m = re.search(r"(?<![\d.])(\d+(?:\.\d+)?)\s*([bm])(?![a-z])", low)
    if m:
        params = float(m.group(1)) * (1e9 if m.group(2) == "b" else 1e6)
        return params, 4096, f"{text} (≈{params / 1e9:.2g}B parameters, from its name)"
    return PARAMS_8B, 4096, f"{text} (size unknown: an 8B model assumed)"


@dataclass(frozen=True)
class ModelIdentity:
    model: str  # hub id or a name for a local model
    revision: str  # hub commit, or a digest of local weights
    template_hash: str  # chat template + tokenizer (see encoders.template_hash)

    @property
    def key(self) -> str:
        return hash_obj({**asdict(self), "feature": FEATURE_VERSION}, size=6)

    @property
    def slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "--", self.model).strip("-")[:80] or "model"


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def dataset_dir(ds: Dataset) -> Path:
    fp = ds.meta.get("text_fingerprint") or ds.fingerprint
    return cache_root() / "features" / f"{ds.name}-{fp}"


def model_dir(ds: Dataset, ident: ModelIdentity) -> Path:
    return dataset_dir(ds) / f"{ident.slug}-{ident.key}"


def _atomic_write_bytes(path: Path, write) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")  # unique across hosts
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_json(path: Path, obj: Any) -> None:
    _atomic_write_bytes(path, lambda p: p.write_text(json.dumps(obj, indent=1)))


# ---------------------------------------------------------------------------- partial extraction


class ChunkStore:
    """The chunks of one running (or interrupted) extraction of one kind (responses or prompts).

    ``item_hashes`` are the distinct texts to embed (in dataset order); ``order`` is the fixed
    processing order (longest first); chunk k covers ``order[k*size:(k+1)*size]``.
    """

    def __init__(self, root: Path, kind: str, ident: ModelIdentity, item_hashes: np.ndarray, order: np.ndarray, chunk_size: int):
        self.root = Path(root)
        self.kind = kind
        self.dir = self.root / f"partial-{kind}"
        self.ident = ident
        self.item_hashes = np.asarray(item_hashes, dtype=object)
        self.order = np.asarray(order, dtype=np.int64)
        self.chunk_size = int(chunk_size)
        self.plan = {
            "identity": asdict(ident),
            "key": ident.key,
            "kind": kind,
            "n_items": len(self.item_hashes),
            "chunk_size": self.chunk_size,
            "items": array_digest(self.item_hashes),
            "order": array_digest(self.order),
        }

    @property
    def n_chunks(self) -> int:
        return (len(self.order) + self.chunk_size - 1) // self.chunk_size

    def chunk_items(self, k: int) -> np.ndarray:
        return self.order[k * self.chunk_size : (k + 1) * self.chunk_size]

    def open(self) -> None:
        """Create the partial directory, or check that an existing one belongs to this extraction."""
        plan_file = self.dir / "plan.json"
        if plan_file.exists():
            try:
                old = json.loads(plan_file.read_text())
            except (OSError, ValueError):
                old = None
            if old != self.plan:
                raise DataError(
                    f"{self.dir} holds a partial extraction made with different settings "
                    f"({_plan_difference(old, self.plan)})",
                    hint=f"delete {self.dir} to start over (or rerun with the settings it was started with)",
                )
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        _write_json(plan_file, self.plan)

    def _paths(self, k: int) -> tuple[Path, Path]:
        return self.dir / f"chunk-{k:05d}.npy", self.dir / f"chunk-{k:05d}.parquet"

    def status(self, k: int) -> str | None:
        """None when chunk k is complete and intact; otherwise why not ("missing" or damage)."""
        npy, idx = self._paths(k)
        if not idx.exists():
            return "missing"
        try:
            import pyarrow.parquet as pq

            meta = pq.read_schema(idx).metadata or {}
            recorded = meta.get(b"npy_digest", b"").decode()
            n = int(meta.get(b"n", b"-1"))
        except Exception as e:
            return f"unreadable index ({type(e).__name__})"
        if b"table_digest" in meta:
            try:
                t = pq.read_table(idx)
                cols = {c: t.column(c).to_numpy(zero_copy_only=False) for c in ("item", "text_hash", "logit", "n_tokens")}
                ok = _chunk_digest(cols) == meta[b"table_digest"].decode()
            except Exception as e:
                return f"unreadable index ({type(e).__name__})"
            if not ok:
                return "index altered (digest mismatch)"
        if not npy.exists():
            return "feature file missing"
        if file_digest(npy) != recorded:
            return "feature file truncated or altered (digest mismatch)"
        if n != len(self.chunk_items(k)):
            return f"holds {n} rows, expected {len(self.chunk_items(k))}"
        return None

    def done_chunks(self, log=None) -> list[int]:
        done = []
        for k in range(self.n_chunks):
            st = self.status(k)
            if st is None:
                done.append(k)
            elif st != "missing" and log is not None:
                log(f"chunk {k} of {self.dir} is damaged ({st}); recomputing it")
        return done

    def write(self, k: int, feats: np.ndarray, logits: np.ndarray, n_tokens: np.ndarray) -> None:
        items = self.chunk_items(k)
        if feats.shape[0] != len(items):
            raise ValueError("chunk size mismatch")
        f16 = feats.astype(np.float16)
        bad = np.flatnonzero(~np.isfinite(f16).all(axis=1))
        if len(bad):
            raise DataError(
                f"extraction produced NaN/Inf features for {len(bad)} texts (items {_preview(items[bad])})"
                + (" — values beyond float16's range" if np.isfinite(feats[bad]).all() else ""),
                hint="check the model and dtype (bf16 on GPU, float32 on CPU); the partial extraction is kept, rerun to resume",
            )
        npy, idx = self._paths(k)
        _atomic_write_bytes(npy, lambda p: _save_npy(p, f16))
        d = file_digest(npy)
        import pyarrow as pa
        import pyarrow.parquet as pq

        cols = {
            "item": items.astype(np.int64),
            "text_hash": self.item_hashes[items].astype(str),
            "logit": np.asarray(logits, dtype=np.float32),
            "n_tokens": np.asarray(n_tokens, dtype=np.int64),
        }
        table = pa.table(cols).replace_schema_metadata({"npy_digest": d, "n": str(len(items)), "table_digest": _chunk_digest(cols)})
        _atomic_write_bytes(idx, lambda p: pq.write_table(table, p))

    def read(self, k: int) -> tuple[np.ndarray, pd.DataFrame]:
        npy, idx = self._paths(k)
        return np.load(npy, allow_pickle=False), pd.read_parquet(idx)


def _chunk_digest(cols: dict[str, np.ndarray]) -> str:
    return array_digest(
        np.asarray(cols["item"], dtype=np.int64),
        np.asarray(cols["text_hash"], dtype=object).astype(str).astype(object),
        np.asarray(cols["logit"], dtype=np.float32),
        np.asarray(cols["n_tokens"], dtype=np.int64),
    )


def _save_npy(path: Path, arr: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, arr, allow_pickle=False)


def _plan_difference(old: dict | None, new: dict) -> str:
    if old is None:
        return "its plan.json is unreadable"
    diffs = []
    if old.get("identity") != new["identity"]:
        o, n = old.get("identity") or {}, new["identity"]
        for k in ("model", "revision", "template_hash"):
            if o.get(k) != n.get(k):
                diffs.append(f"{k} {o.get(k)!r} ≠ {n.get(k)!r}")
    for k in ("items", "n_items", "chunk_size", "order", "kind"):
        if old.get(k) != new.get(k):
            diffs.append({"items": "different texts", "n_items": "different number of texts", "order": "different order"}.get(k, f"different {k}"))
    return "; ".join(diffs) or "different plan"


def finalize(
    store: ChunkStore,
    row_to_item: np.ndarray,
    head: np.ndarray | None,
    info: dict[str, Any],
    head_tolerance,
) -> Path:
    """Assemble the chunks into the final arrays (rows = dataset rows), check, write the manifest."""
    feat_name, idx_name, man_name = FILES[store.kind]
    root = store.root
    remove_leftovers(root, store.kind, partial=False)  # an assembler killed before us left these
    n_rows = len(row_to_item)
    dim = None
    item_logit = np.full(len(store.item_hashes), np.nan, dtype=np.float32)
    item_ntok = np.zeros(len(store.item_hashes), dtype=np.int64)
    item_pos = np.full(len(store.item_hashes), -1, dtype=np.int64)
    for k in range(store.n_chunks):
        arr, idx = store.read(k)
        dim = arr.shape[1]
        items = idx["item"].to_numpy()
        item_logit[items] = idx["logit"].to_numpy()
        item_ntok[items] = idx["n_tokens"].to_numpy()
        item_pos[items] = k * store.chunk_size + np.arange(len(items))
    if (item_pos < 0).any():
        raise DataError(f"{store.dir}: {int((item_pos < 0).sum())} texts were never embedded", hint="rerun bench embed to resume")
    # Write features row by row in dataset order, one chunk at a time (bounded memory).
    out_path = root / feat_name
    tmp = root / f".{feat_name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=(n_rows, dim))
        pos_of_row = item_pos[row_to_item]
        chunk_of_row = pos_of_row // store.chunk_size
        worst = 0.0
        for k in range(store.n_chunks):
            rows = np.flatnonzero(chunk_of_row == k)
            arr, _ = store.read(k)
            block = arr[pos_of_row[rows] - k * store.chunk_size]
            out[rows] = block
            if head is not None:
                # score(feature) ≈ logit on every stored (float16) feature.
                f32 = block.astype(np.float32)
                got = f32 @ head.astype(np.float32)
                want = item_logit[row_to_item[rows]]
                tol = head_tolerance(f32, want)
                excess = np.abs(got - want) - tol
                worst = max(worst, float(excess.max(initial=-np.inf)) if len(rows) else worst)
                if (excess > 0).any():
                    j = int(np.argmax(excess))
                    raise DataError(
                        f"score(feature) ≠ logit for {int((excess > 0).sum())} stored features "
                        f"(e.g. row {int(rows[j])}: head gives {got[j]:.5f}, the model gave {want[j]:.5f})",
                        hint="the features are not the score head's input (wrong token or layer); nothing was marked complete",
                    )
        out.flush()
        del out
        os.replace(tmp, out_path)
    finally:  # an error (or the score check) leaves no half-written array behind
        if tmp.exists():
            tmp.unlink()
    index = pd.DataFrame(
        {
            "row": np.arange(n_rows, dtype=np.int64),
            "text_hash": store.item_hashes[row_to_item].astype(str),
            "logit": item_logit[row_to_item],
            "n_tokens": item_ntok[row_to_item],
        }
    )
    _atomic_write_bytes(root / idx_name, lambda p: index.to_parquet(p, index=False))
    if head is not None and store.kind == "response":
        _atomic_write_bytes(root / "head.npy", lambda p: _save_npy(p, head.astype(np.float32)))
    manifest = {
        "complete": True,
        "kind": store.kind,
        "identity": asdict(store.ident),
        "key": store.ident.key,
        "feature_version": FEATURE_VERSION,
        "rows": n_rows,
        "dim": int(dim),
        "dtype": "float16",
        "texts_embedded": int(len(store.item_hashes)),
        "files": {feat_name: file_digest(out_path), idx_name: file_digest(root / idx_name),
                  **({"head.npy": file_digest(root / "head.npy")} if head is not None and store.kind == "response" else {})},
        "text_hashes": array_digest(index["text_hash"].to_numpy(dtype=object)),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%S"),
        **info,
    }
    manifest["digest"] = manifest_digest(manifest)
    _write_json(root / man_name, manifest)
    shutil.rmtree(store.dir, ignore_errors=True)
    return root


def remove_leftovers(root: Path, kind: str, partial: bool = True) -> int:
    """Delete what a killed extraction of ``kind`` left in ``root``: temporary files of the final
    arrays and, with ``partial``, the chunk directory (only once the manifest marks the arrays
    complete). Call it only while no other process can be assembling (holding the finalize claim,
    or once the manifest exists). Returns the number of entries removed."""
    root = Path(root)
    names = list(FILES[kind]) + (["head.npy"] if kind == "response" else [])
    n = 0
    for name in names:
        for tmp in root.glob(f".{name}.*.tmp"):
            try:
                tmp.unlink()
                n += 1
            except OSError:
                pass
    part = root / f"partial-{kind}"
    if partial and part.exists():
        shutil.rmtree(part, ignore_errors=True)
        n += 1
    return n


# ---------------------------------------------------------------------------- reading


def read_manifest(directory: Path, kind: str = "response") -> dict[str, Any] | None:
    path = Path(directory) / FILES[kind][2]
    if not path.exists():
        return None
    try:
        man = json.loads(path.read_text())
        if not isinstance(man, dict):
            raise ValueError("not an object")
    except (OSError, ValueError):
        raise DataError(f"feature cache manifest {path} is unreadable", hint=f"delete {path.parent} and run bench embed again") from None
    if "digest" in man and manifest_digest(man) != man["digest"]:
        raise DataError(
            f"feature cache manifest {path} does not match its recorded digest (corrupt or edited)",
            hint=f"delete {path.parent} and run bench embed again",
        )
    return man if man.get("complete") is True else None


def manifest_digest(man: dict[str, Any]) -> str:
    """Hash of a manifest's content (all but the digest itself, as JSON reads it back)."""
    from bench.hashing import digest

    body = json.loads(json.dumps({k: v for k, v in man.items() if k != "digest"}))
    return digest(json.dumps(body, sort_keys=True, separators=(",", ":")))


def _verify_files(directory: Path, man: dict[str, Any]) -> None:
    stamp_path = directory / ".verified.json"
    try:
        stamps = json.loads(stamp_path.read_text())
    except (OSError, ValueError):
        stamps = {}
    changed = False
    for name, expected in man["files"].items():
        p = directory / name
        if not p.exists():
            raise DataError(f"feature cache file missing: {p}", hint=f"delete {directory} and run bench embed again")
        st = p.stat()
        stamp = [st.st_size, st.st_mtime_ns, expected]
        if stamps.get(name) == stamp:
            continue
        if file_digest(p) != expected:
            raise DataError(
                f"feature cache file {p} does not match its manifest (truncated or altered)",
                hint=f"delete {directory} and run bench embed again",
            )
        stamps[name] = stamp
        changed = True
    if changed:
        try:
            _write_json(stamp_path, stamps)
        except OSError:
            pass


def find_caches(ds: Dataset, model: str) -> tuple[list[Path], list[Path]]:
    """(complete, partial) cache directories of ``model`` for ``ds``."""
    d = dataset_dir(ds)
    complete, partial = [], []
    if not d.is_dir():
        return complete, partial
    for sub in sorted(d.iterdir()):
        if not sub.is_dir():
            continue
        man_path = sub / "manifest.json"
        plan_path = sub / "partial-response" / "plan.json"
        if man_path.exists():
            m = read_manifest(sub)  # an unreadable or altered manifest is reported, not taken for a partial run
            if m is not None and m.get("identity", {}).get("model") == model:
                complete.append(sub)
                continue
        try:
            if man_path.exists():
                m = json.loads(man_path.read_text())
                if m.get("identity", {}).get("model") == model and m.get("complete") is True:
                    complete.append(sub)
                    continue
            if plan_path.exists():
                p = json.loads(plan_path.read_text())
                if p.get("identity", {}).get("model") == model:
                    partial.append(sub)
        except (OSError, ValueError):
            partial.append(sub)
    return complete, partial


def open_cached_features(ds: Dataset, model: str, spec: str, key: str | None = None, model_arg: str | None = None) -> Dataset:
    """Attach the complete cached features of ``model`` to ``ds`` (features, rm_score, prompt
    features when extracted) or stop with the exact ``bench embed`` command."""
    from bench.textkeys import MODEL_ALIASES, prompt_hashes, text_hashes

    complete, partial = find_caches(ds, model)
    if key:
        complete = [c for c in complete if c.name.endswith("-" + str(key))]
        partial = [c for c in partial if c.name.endswith("-" + str(key))]
    alias = {v: k for k, v in MODEL_ALIASES.items()}.get(model, model_arg or model)
    command = f"bench embed --dataset {spec} --model {alias}"
    if not complete:
        cost = estimate_cost(ds, model=model_arg or model)
        what = (
            f"an extraction of {model} features was interrupted ({_progress_of(partial[0])}); resume it with"
            if partial
            else f"no {model} features are cached for {ds.name} yet; extract them with"
        )
        raise DataError(
            f"{ds.name}: {what}\n    {command}\n  expected cost: {cost['summary']}",
            hint=(
                f"run the command above (a GPU is strongly advised); methods that read only text (synthesizeme) "
                f"can run without it on --dataset {spec}{',' if ':' in spec else ':'}features=none, methods that "
                f"need features cannot"
            ),
        )
    if len(complete) > 1:
        names = ", ".join(c.name.rsplit("-", 1)[1] for c in complete)
        raise DataError(
            f"{ds.name}: several {model} feature caches exist (keys {names}: other revisions or chat templates)",
            hint=f"choose one with --dataset {spec}{',' if ':' in spec else ':'}feature_key=KEY, or delete the stale ones under {dataset_dir(ds)}",
        )
    directory = complete[0]
    man = read_manifest(directory)
    ident = man["identity"]
    if ident.get("model") != model:
        raise DataError(f"{directory} was written for model {ident.get('model')!r}, not {model!r}", hint=f"delete {directory}")
    expected_key = ModelIdentity(**ident).key
    if not directory.name.endswith("-" + expected_key) or man.get("key") != expected_key:
        raise DataError(
            f"{directory}: its manifest describes another model, revision or chat template "
            f"(key {man.get('key')} / {expected_key}) than the directory name",
            hint=f"the cache was moved or edited; delete {directory} and run `{command}`",
        )
    if man.get("feature_version") != FEATURE_VERSION:
        raise DataError(f"{directory} holds features of an older definition ({man.get('feature_version')})", hint=f"delete it and run `{command}`")
    if man["rows"] != len(ds.responses):
        raise DataError(
            f"{directory} holds {man['rows']} feature rows but {ds.name} has {len(ds.responses)} responses",
            hint=f"the cache belongs to other texts; delete {directory} and run `{command}`",
        )
    _verify_files(directory, man)
    index = pd.read_parquet(directory / "index.parquet")
    want = text_hashes(ds)
    if not np.array_equal(index["text_hash"].to_numpy(dtype=object), want):
        bad = np.flatnonzero(index["text_hash"].to_numpy(dtype=object) != want)
        raise DataError(
            f"{directory}: the cached features belong to other texts (rows {_preview(bad)} differ)",
            hint=f"delete {directory} and run `{command}`",
        )
    arr = np.load(directory / "features.npy", mmap_mode="r", allow_pickle=False)
    # NaN/Inf were refused when the chunks were written, and the digest above guarantees the file
    # is what was checked: no 2.5 GB rescan on every run.
    ds.features = Features(arr)
    ds.responses = ds.responses.copy()
    ds.responses["rm_score"] = index["logit"].to_numpy(dtype=np.float32)
    pman = read_manifest(directory, "prompt")
    if pman is not None:
        _verify_files(directory, pman)
        pidx = pd.read_parquet(directory / "prompt_index.parquet")
        if np.array_equal(pidx["text_hash"].to_numpy(dtype=object), prompt_hashes(ds)):
            ds.prompt_features = Features(np.load(directory / "prompt_features.npy", mmap_mode="r", allow_pickle=False))
    ds.meta["feature_model"] = model
    ds.meta["feature_revision"] = ident.get("revision")
    ds.meta["feature_key"] = expected_key
    ds.meta["feature_cache"] = str(directory)
    ds.fingerprint = hash_obj({"text": ds.meta.get("text_fingerprint", ds.fingerprint), "features": ident, "version": FEATURE_VERSION}, size=12)
    return ds


def _progress_of(partial_dir: Path) -> str:
    d = partial_dir / "partial-response"
    try:
        plan = json.loads((d / "plan.json").read_text())
        n = (plan["n_items"] + plan["chunk_size"] - 1) // plan["chunk_size"]
        k = len(list(d.glob("chunk-*.parquet")))
        return f"{k} of {n} chunks written in {d}"
    except (OSError, ValueError, KeyError):
        return f"in {d}"


def estimate_cost(
    ds: Dataset, prompts: bool = False, params: float | None = None, dim: int | None = None,
    model: str | None = None, device: str = "cuda", threads: int | None = None,
) -> dict[str, Any]:
    """Texts, approximate tokens, disk and compute time of extracting ``ds``'s features with
    ``model`` (sized by :func:`model_scale`; default an 8B RM) on ``device`` (``cuda``, or ``cpu``
    with ``threads`` cores)."""
    m_params, m_dim, label = model_scale(model)
    params = m_params if params is None else params
    dim = m_dim if dim is None else dim
    plen = {k: sum(len(m["content"]) for m in v) for k, v in (ds.prompts or {}).items()}
    pid = ds.responses["prompt_id"].astype(str).to_numpy()
    chars = np.array([plen.get(p, 0) for p in pid], dtype=np.int64) + ds.responses["text"].astype(str).str.len().to_numpy()
    # ≈ 4 characters per token (English, Llama-3 tokenizer) + ~40 template tokens per conversation.
    tokens = int(chars.sum() / 4 + 40 * len(chars))
    n = len(ds.responses)
    if prompts:
        tokens += int(sum(plen.values()) / 4 + 40 * len(plen))
        n += len(plen)
    if str(device).startswith("cuda"):
        flops = ASSUMED_FLOPS
        where = f"of GPU time for {label} with batching (assumes ~{ASSUMED_FLOPS / 1e12:.0f} TFLOP/s sustained in bf16; the official one-text-at-a-time loop is several times slower)"
    else:
        cores = threads or os.cpu_count() or 1
        flops = ASSUMED_CPU_FLOPS_PER_CORE * cores
        where = f"on {cores} CPU core{'s' if cores != 1 else ''} for {label} (assumes ~{ASSUMED_CPU_FLOPS_PER_CORE / 1e9:.0f} GFLOP/s per core in float32; a GPU is far faster)"
    seconds = tokens * 2 * params / flops
    disk = (n * dim * 2) + n * 40
    size = f"{disk / 2**30:.1f} GiB" if disk >= 2**29 else f"{disk / 2**20:.1f} MiB"
    count = f"{tokens / 1e6:.1f}M" if tokens >= 1e6 else f"{tokens / 1e3:.0f}k"
    summary = f"{n:,} texts, ≈{count} tokens; ≈{_fmt_time(seconds)} {where}, ≈{size} of float16 features on disk"
    return {"texts": n, "tokens": tokens, "seconds": seconds, "gpu_seconds": seconds, "device": str(device), "disk_bytes": disk, "summary": summary}


def _fmt_time(s: float) -> str:
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    return f"{s / 3600:.1f} h"

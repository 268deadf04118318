"""The LLM engine layer: one interface, several backends (see ``base.py`` and ``engine.py``).

``make_engine(backend, model, ...)`` builds an :class:`LLMEngine` over

* ``vllm`` — vLLM offline inference (``vllm.LLM``), batched chat generation on a GPU;
* ``openai`` — any OpenAI-compatible server over HTTP (``vllm serve``, llama.cpp, hosted APIs);
* ``transformers`` — transformers generation, the CPU fallback;
* ``scripted`` — deterministic scripted answers (tests, dry runs).

Nothing heavy is imported here: each backend imports its runtime when it is built.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.llm.base import Backend, ChatRequest, Completion, SamplingParams
from bench.llm.cache import ResponseCache
from bench.llm.engine import EngineStats, LLMEngine

BACKENDS = ("vllm", "openai", "transformers", "scripted")

__all__ = [
    "BACKENDS",
    "Backend",
    "ChatRequest",
    "Completion",
    "EngineStats",
    "LLMEngine",
    "LazyBackend",
    "ResponseCache",
    "SamplingParams",
    "default_cache_path",
    "make_backend",
    "make_engine",
]


def default_cache_path() -> Path:
    from bench.llm.models import cache_root

    return cache_root() / "llm" / "responses.sqlite"


class LazyBackend(Backend):
    """Builds the real backend on the first request that misses the cache.

    A rerun whose answers are all cached therefore never loads a model; ``close`` frees the
    model (e.g. GPU memory before fine-tuning) and the next miss builds it again.
    """

    def __init__(self, name: str, model_id: str, factory, info: dict[str, Any]):
        self.name = name
        self.model_id = model_id
        self._factory = factory
        self._info = info
        self._real: Backend | None = None
        self.builds = 0

    @property
    def loaded(self) -> bool:
        return self._real is not None

    def _get(self) -> Backend:
        if self._real is None:
            self._real = self._factory()
            self.builds += 1
            if self._real.model_id != self.model_id:
                raise RuntimeError(f"backend built for {self._real.model_id}, expected {self.model_id}")
        return self._real

    def generate(self, requests):
        return self._get().generate(requests)

    def describe(self) -> dict[str, Any]:
        if self._real is not None:
            return {**self._real.describe(), "builds": self.builds}
        return {"backend": self.name, "model_id": self.model_id, **self._info, "builds": self.builds}

    def close(self) -> None:
        if self._real is not None:
            self._real.close()
            self._real = None
            import gc

            gc.collect()
            try:
                import torch

                if torch.cuda.is_available():
                    torch.cuda.empty_cache()
            except ImportError:  # pragma: no cover
                pass


def make_backend(
    backend: str,
    model: str,
    device: str = "cpu",
    threads: int | None = None,
    lazy: bool = True,
    replicas: int = 1,
    **options: Any,
) -> Backend:
    """A backend by name. ``lazy`` (default) defers loading the model to the first cache miss.

    ``replicas`` > 1 serves the requests from that many copies of the backend, each a Ray actor
    (:class:`bench.llm.pool.RayPoolBackend`); the model id — hence the cache — is the single one's.
    """
    from bench.errors import BenchError, did_you_mean

    if replicas > 1:
        model_id = make_backend(backend, model, device=device, threads=threads, lazy=True, **options).model_id

        def pool() -> Backend:
            from bench.llm.pool import RayPoolBackend

            return RayPoolBackend(backend, model, model_id, replicas, device=device, threads=threads, **options)

        return LazyBackend(backend, model_id, pool, {**options, "replicas": replicas}) if lazy else pool()

    if backend == "scripted":
        from bench.llm.scripted import named_script

        if options:
            raise BenchError(f"the scripted backend takes no options, got {sorted(options)}")
        return named_script(model)
    if backend in ("vllm", "transformers"):
        import importlib.util

        package = "vllm" if backend == "vllm" else "transformers"
        if importlib.util.find_spec(package) is None:  # fail at once, not at the first cache miss
            extra = "vllm" if backend == "vllm" else "text"
            raise BenchError(
                f"the {backend} backend needs the '{package}' package",
                hint=f"pip install 'bench-prm[{extra}]'" + (", on a machine with a CUDA GPU; or use backend=openai with a server, or backend=transformers" if backend == "vllm" else ""),
            )
    if backend == "vllm":
        from bench.llm.vllm_backend import VLLMBackend

        model_id = f"vllm:{model}"

        def factory() -> Backend:
            return VLLMBackend(model, **options)

    elif backend == "openai":
        from bench.llm.openai_backend import OpenAIBackend

        model_id = f"openai:{model}"

        def factory() -> Backend:
            return OpenAIBackend(model, **options)

    elif backend == "transformers":
        from bench.llm.models import model_identity

        dtype = options.get("dtype", "auto")
        if dtype == "auto":
            dtype = "float32" if device == "cpu" else "bfloat16"
        options = {**options, "dtype": dtype}
        model_id = f"transformers:{model_identity(model)}:{dtype}"

        def factory() -> Backend:
            try:
                import transformers  # noqa: F401
            except ImportError:
                raise BenchError("the transformers backend needs the 'transformers' package", hint="pip install 'bench-prm[text]'") from None
            from bench.llm.hf_backend import HFBackend

            return HFBackend(model, device=device, threads=threads, **options)

    else:
        raise did_you_mean(backend, BACKENDS, "LLM backend")
    if lazy:
        return LazyBackend(backend, model_id, factory, dict(options))
    return factory()


def make_engine(
    backend: str,
    model: str,
    cache: bool | str | Path = True,
    max_attempts: int = 3,
    batch_size: int = 256,
    device: str = "cpu",
    threads: int | None = None,
    log=None,
    lazy: bool = True,
    replicas: int = 1,
    **options: Any,
) -> LLMEngine:
    """An engine over a named backend; ``cache`` is True (the default file), False, or a path.
    With ``replicas`` > 1 each backend call carries ``batch_size`` requests per replica."""
    be = make_backend(backend, model, device=device, threads=threads, lazy=lazy, replicas=replicas, **options)
    batch_size = batch_size * max(1, replicas)
    rc = None
    if cache:
        rc = ResponseCache(default_cache_path() if cache is True else Path(cache))
    return LLMEngine(be, cache=rc, max_attempts=max_attempts, batch_size=batch_size, log=log)

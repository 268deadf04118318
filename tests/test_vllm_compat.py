"""The installed vLLM's API is read, not guessed (bench/llm/vllm_compat.py).

Stand-in classes spell the three generations of the pooling API; the last test reads the real,
installed vLLM (marker ``vllm``)."""

from __future__ import annotations

import dataclasses

import pytest

from bench.errors import BenchError
from bench.llm.vllm_compat import detect_api, engine_defaults, last_token_pooler_options, pooling_llm_kwargs


# ---------------------------------------------------------------- three generations of the API
@dataclasses.dataclass
class PoolerOld:  # 0.6 – 0.9 (and 0.10 – 0.2x): normalize
    pooling_type: str | None = None
    normalize: bool | None = None


class PoolerNew:  # today: a pydantic dataclass that refuses the removed field

    model_fields = {"pooling_type": None, "use_activation": None, "dimensions": None}

    def __init__(self, **kw):
        if "normalize" in kw:
            raise ValueError("Parameter `normalize` was removed; use `use_activation` instead")  # as pydantic does
        self.kw = kw


class LLMTask:
    def __init__(self, model, task="auto", override_pooler_config=None, enforce_eager=False, **kwargs):
        pass


class LLMRunnerOverride:
    def __init__(self, model, *, runner="auto", convert="auto", override_pooler_config=None, enforce_eager=False, **kwargs):
        pass


class LLMKwargsOnly:  # LLM(model, **kwargs) → EngineArgs(**kwargs)
    def __init__(self, model, **kwargs):
        pass


@dataclasses.dataclass
class EngineArgsNew:
    model: str = ""
    runner: str = "auto"
    convert: str = "auto"
    pooler_config: object = None
    enforce_eager: bool = False
    gpu_memory_utilization: float = 0.9


class LLMNothing:
    def __init__(self, model, dtype="auto"):
        pass


def test_old_task_spelling():
    api = detect_api(LLMTask, PoolerOld, version="0.6.3")
    kw = pooling_llm_kwargs(api, PoolerOld)
    assert kw["task"] == "embed" and "runner" not in kw
    assert kw["override_pooler_config"] == PoolerOld(pooling_type="LAST", normalize=False)


def test_runner_with_override_pooler_config():
    api = detect_api(LLMRunnerOverride, PoolerOld, version="0.10.1")
    kw = pooling_llm_kwargs(api, PoolerOld)
    assert (kw["runner"], kw["convert"]) == ("pooling", "embed") and "task" not in kw
    assert kw["override_pooler_config"] == PoolerOld(pooling_type="LAST", normalize=False)


def test_today_spelling_never_sends_the_removed_field():
    api = detect_api(LLMKwargsOnly, PoolerNew, EngineArgsNew, version="0.32.0")
    assert api.pooling_route == "runner" and api.pooler_argument == "pooler_config"
    assert last_token_pooler_options(api) == {"pooling_type": "LAST", "use_activation": False}
    kw = pooling_llm_kwargs(api, PoolerNew)  # would raise if `normalize` were passed
    assert (kw["runner"], kw["convert"]) == ("pooling", "embed")
    assert kw["pooler_config"].kw == {"pooling_type": "LAST", "use_activation": False}


def test_engine_args_are_read_only_when_llm_forwards_kwargs():
    api = detect_api(LLMNothing, PoolerNew, EngineArgsNew, version="9.9")
    assert api.pooling_route == "none"  # LLM takes no **kwargs: EngineArgs' fields do not reach it
    with pytest.raises(BenchError, match="neither runner/convert nor task") as e:
        pooling_llm_kwargs(api, PoolerNew)
    assert "supports vLLM 0.6 or newer" in e.value.hint


def test_a_pooler_without_the_fields_bench_needs_is_named():
    class Bare:
        def __init__(self, dimensions=None):
            pass

    api = detect_api(LLMKwargsOnly, Bare, EngineArgsNew, version="9.9")
    with pytest.raises(BenchError, match="no pooling-type field"):
        pooling_llm_kwargs(api, Bare)

    @dataclasses.dataclass
    class NoNorm:
        pooling_type: str | None = None

    api = detect_api(LLMKwargsOnly, NoNorm, EngineArgsNew, version="9.9")
    with pytest.raises(BenchError, match="neither use_activation nor normalize"):
        pooling_llm_kwargs(api, NoNorm)


def test_cpu_build_runs_eager_and_gets_no_gpu_share():
    cpu = detect_api(LLMKwargsOnly, PoolerNew, EngineArgsNew, version="0.32.0", cpu=True)
    gpu = detect_api(LLMKwargsOnly, PoolerNew, EngineArgsNew, version="0.32.0", cpu=False)
    assert engine_defaults(cpu, None, 0.5) == {"enforce_eager": True}
    assert engine_defaults(gpu, None, 0.5) == {"enforce_eager": False, "gpu_memory_utilization": 0.5}
    assert engine_defaults(gpu, True, None) == {"enforce_eager": True}


# ---------------------------------------------------------------- the installed vLLM
@pytest.mark.vllm
def test_installed_vllm_api_is_understood():
    pytest.importorskip("vllm")
    from vllm.config import PoolerConfig

    from bench.llm.vllm_compat import installed_api

    api = installed_api()
    assert api.pooling_route in ("runner", "task") and api.pooler_argument is not None, api
    kw = pooling_llm_kwargs(api, PoolerConfig)  # builds the real PoolerConfig (pydantic validation)
    pooler = kw[api.pooler_argument]
    assert getattr(pooler, "pooling_type", None) in ("LAST", None) or "LAST" in str(pooler)
    flag = "use_activation" if "use_activation" in api.pooler_fields else "normalize"
    assert getattr(pooler, flag) is False
    import torch

    if not torch.cuda.is_available():
        assert api.cpu, "vLLM without a GPU must be the CPU build"


def test_data_parallel_cpu_workers_get_disjoint_cores(monkeypatch):
    import os

    from bench.features.parallel import cpu_binds

    monkeypatch.delenv("VLLM_CPU_OMP_THREADS_BIND", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3}, raising=False)
    assert cpu_binds(2, 1) == ["0", "1"]
    assert cpu_binds(2, None) == ["0,1", "2,3"]
    assert cpu_binds(3, 2) == [None, None, None]  # 6 cores asked of 4: vLLM's own binding
    monkeypatch.setenv("VLLM_CPU_OMP_THREADS_BIND", "0")
    assert cpu_binds(2, 1) == [None, None]  # the user's choice stands

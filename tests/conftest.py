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


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


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

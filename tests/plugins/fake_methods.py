"""Methods used only by tests: one that always fails, one that returns NaN."""

from __future__ import annotations

import numpy as np

from bench.api import Method, ParamCount


class Boom(Method):
    name = "boom"
    requires = frozenset({"features"})

    def __init__(self, where: str = "fit"):
        self.where = where

    def fit(self, train, ctx):
        self.ctx_ = ctx
        if self.where == "fit":
            raise RuntimeError("boom in fit")
        return self

    def score(self, queries):
        raise RuntimeError("boom in score")


class Coin(Method):
    """Scores with a seeded coin; NaN for every fifth pair."""

    name = "coin"
    requires = frozenset()

    def __init__(self):
        pass

    def fit(self, train, ctx):
        self.ctx_ = ctx
        return self

    def score(self, queries):
        rng = np.random.default_rng(self.ctx_.seed)
        m = rng.standard_normal(len(queries))
        m[::5] = np.nan
        return m

    def param_count(self):
        return ParamCount(0, 0)


class Sleepy(Method):
    """A slow constant scorer that logs each fit (``$BENCH_TEST_COUNTER``): counts computations."""

    name = "sleepy"
    requires = frozenset()

    def __init__(self, delay: float = 0.2):
        self.delay = delay

    def fit(self, train, ctx):
        import os
        import time

        self.ctx_ = ctx
        path = os.environ.get("BENCH_TEST_COUNTER")
        if path:
            fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            os.write(fd, f"{ctx.seed} {os.getpid()}\n".encode())
            os.close(fd)
        time.sleep(self.delay)
        return self

    def score(self, queries):
        return np.arange(len(queries), dtype=np.float64) % 3 - 1.0

    def param_count(self):
        return ParamCount(0, 0)


class Suicide(Method):
    """Kills its own process (SIGKILL) while scoring the second support budget of a fit group,
    once per marker file (the ``marker`` path): a worker lost mid-cell."""

    name = "suicide"
    requires = frozenset()

    def __init__(self, marker: str = ""):
        self.marker = marker

    def fit(self, train, ctx):
        self.ctx_ = ctx
        self.adapted_ = 0
        return self

    def adapt(self, support):
        self.adapted_ += 1
        return self

    def score(self, queries):
        import os
        import signal

        marker = self.marker
        if self.adapted_ == 2 and marker:
            try:
                fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                pass
            else:
                os.close(fd)
                os.kill(os.getpid(), signal.SIGKILL)
        return np.where(np.arange(len(queries)) % 2 == 0, 1.0, -1.0)

    def param_count(self):
        return ParamCount(0, 0)


class Probe(Method):
    """Records, while fitting, the torch determinism settings and the worker it ran in (``--deterministic``)."""

    name = "probe"
    requires = frozenset()

    def __init__(self):
        pass

    def fit(self, train, ctx):
        import os

        import torch

        self.ctx_ = ctx
        self.seen_ = {
            "pid": os.getpid(),
            "torch_deterministic": torch.are_deterministic_algorithms_enabled(),
            "cudnn_benchmark": torch.backends.cudnn.benchmark,
            "cudnn_deterministic": torch.backends.cudnn.deterministic,
            "cublas_workspace": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
        }
        return self

    def score(self, queries):
        return np.where(np.arange(len(queries)) % 2 == 0, 1.0, -1.0)

    def extra_meta(self):
        return dict(self.seen_)

    def param_count(self):
        return ParamCount(0, 0)


FAKES = {
    "boom": "tests.plugins.fake_methods:Boom",
    "coin": "tests.plugins.fake_methods:Coin",
    "sleepy": "tests.plugins.fake_methods:Sleepy",
    "suicide": "tests.plugins.fake_methods:Suicide",
    "probe": "tests.plugins.fake_methods:Probe",
}


def register_fakes() -> None:
    """Add the fake methods to the registry of this process (tests and run_with_fakes)."""
    from importlib.metadata import EntryPoint

    from bench import registry

    real = registry._group.__wrapped__ if hasattr(registry._group, "__wrapped__") else registry._group

    def group(name):
        eps = dict(real(name))
        if name == registry.METHOD_GROUP:
            for n, target in FAKES.items():
                eps[n] = EntryPoint(name=n, value=target, group=name)
        return eps

    registry._group = group

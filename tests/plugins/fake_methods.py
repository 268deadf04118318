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

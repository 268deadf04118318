"""Methods that break the contract on purpose: the shipped checks must catch them."""

from __future__ import annotations

import os

import numpy as np

from bench.api import Method, ParamCount


class Clock(Method):
    """Draws its scores from the process id: two identical runs differ. It has no card."""

    name = "clock"
    requires = frozenset()

    def __init__(self):
        pass

    def fit(self, train, ctx):
        self.ctx_ = ctx
        return self

    def score(self, queries):
        rng = np.random.default_rng(os.getpid())
        return rng.standard_normal(len(queries))

    def param_count(self):
        return ParamCount(0, 0)


class Nameless(Method):
    requires = frozenset()

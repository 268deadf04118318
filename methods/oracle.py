"""oracle: the generator's true user reward (synthetic data only) — the Bayes-optimal ceiling."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs


class Oracle(Method):
    name: ClassVar[str] = "oracle"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"oracle"})
    summary: ClassVar[str] = "true user rewards from the synthetic generator: the Bayes-optimal ceiling"
    kind: ClassVar[str] = "reference"

    def __init__(self):
        pass

    def fit(self, train: UserPairs, ctx: Context) -> "Oracle":
        self.ctx_ = ctx
        return self

    def score(self, queries: Queries) -> np.ndarray:
        if queries.truth_a is None or queries.truth_b is None:
            raise ValueError("the oracle needs ground-truth rewards (synthetic datasets only)")
        return np.asarray(queries.truth_a, dtype=np.float64) - np.asarray(queries.truth_b, dtype=np.float64)

    def param_count(self) -> ParamCount:
        return ParamCount(0, 0)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(0, 0)

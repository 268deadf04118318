"""rm: the reward model's own score of each response (the zero-shot Skywork rows of Table 1)."""

from __future__ import annotations

from typing import ClassVar

import numpy as np

from bench.api import Context, Method, ParamCount, Queries, UserPairs


class RewardModelScore(Method):
    name: ClassVar[str] = "rm"
    version: ClassVar[str] = "1"
    requires: ClassVar[frozenset[str]] = frozenset({"rm_scores"})
    summary: ClassVar[str] = "the stored reward-model score of each response (no training, no personalisation)"
    kind: ClassVar[str] = "reference"

    def __init__(self):
        pass

    def fit(self, train: UserPairs, ctx: Context) -> "RewardModelScore":
        if ctx.rm_score is None:
            raise ValueError("this dataset stores no reward-model scores")
        self.ctx_ = ctx
        return self

    def score(self, queries: Queries) -> np.ndarray:
        s = self.ctx_.rm_score
        return s[queries.a].astype(np.float64) - s[queries.b].astype(np.float64)

    def param_count(self) -> ParamCount:
        return ParamCount(0, 0)

    def trained_param_count(self) -> ParamCount:
        return ParamCount(0, 0)

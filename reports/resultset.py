"""The stored results a plan needs, loaded once for every table and figure.

Only the planned cells are read (each file verified against its rows hash); every slot of every
output knows whether its cell is done, missing, failed (with the error) or corrupt, so a report
can say exactly which cells it lacks instead of silently averaging what happens to be there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.experiments import Plan
from bench.metrics import cell_metrics


def budget_text(v) -> str:
    return "all" if v is None or (isinstance(v, float) and np.isnan(v)) else str(int(v))


@dataclass
class ResultSet:
    plan: Plan
    results: Path
    rows: pd.DataFrame  # per-user rows of every done planned cell
    metas: dict[str, dict[str, Any]]
    states: dict[str, str]  # key → done | missing | failed | corrupt
    errors: dict[str, str] = field(default_factory=dict)  # key → failure message
    metrics: pd.DataFrame = field(default_factory=pd.DataFrame)  # split-level metrics, index = cell
    _by_cell: dict[str, pd.DataFrame] = field(default_factory=dict)

    @classmethod
    def load(cls, plan: Plan, results: Path, known=None) -> "ResultSet":
        """Read the planned cells (verified); cells already read into ``known`` are not read again."""
        from bench.experiments import read_cells

        stored = read_cells(plan.keys, results, known)
        frames = [stored.rows[k] for k in plan.keys if k in stored.rows]
        rows = pd.concat(frames, ignore_index=True) if frames else None
        return cls.from_frames(plan, rows, stored.metas, stored.states, stored.errors, results)

    @classmethod
    def from_frames(cls, plan: Plan, rows: pd.DataFrame | None, metas: dict[str, dict[str, Any]],
                    states: dict[str, str] | None = None, errors: dict[str, str] | None = None,
                    results: Path | str = ".") -> "ResultSet":
        """From per-user rows already in memory (``states`` default: done where rows exist)."""
        if rows is None or not len(rows):
            rows = pd.DataFrame(columns=["cell", "split_seed", "user", "seen", "accuracy", "n_support", "n_test",
                                         "split_hash"])
        if states is None:
            have = set(rows["cell"])
            states = {k: ("done" if k in have else "missing") for k in plan.keys}
        metrics = cell_metrics(rows, by=("cell",)).set_index("cell") if len(rows) else pd.DataFrame()
        by_cell = {k: g for k, g in rows.groupby("cell", sort=False)} if len(rows) else {}
        return cls(plan, Path(results), rows, metas, states, dict(errors or {}), metrics, by_cell)

    # ------------------------------------------------------------------ per output
    def slots(self, output: str) -> pd.DataFrame:
        """The output's assignments with state and split-level metrics (NaN where not done)."""
        recs = [a.__dict__ for a in self.plan.for_output(output)]
        if not recs:
            return pd.DataFrame(columns=["output", "key", "setting", "variant", "method", "seed", "unseen_shots",
                                         "dataset", "panel", "sweep_param", "sweep_value", "state"])
        frame = pd.DataFrame.from_records(recs)
        frame["unseen_label"] = [budget_text(u) for u in frame["unseen_shots"]]
        frame["state"] = frame["key"].map(self.states)
        if len(self.metrics):
            frame = frame.join(self.metrics, on="key")
        return frame

    def user_rows(self, keys) -> pd.DataFrame:
        parts = [self._by_cell[k] for k in keys if k in self._by_cell]
        return pd.concat(parts, ignore_index=True) if parts else self.rows.iloc[:0]

    def missing_lines(self, output: str) -> list[str]:
        """One line per slot of the output whose cell is not done."""
        s = self.slots(output)
        if not len(s):
            return []
        bad = s[s["state"] != "done"]
        settings = self.plan.settings
        lines = []
        for (variant, setting, unseen, state), g in bad.groupby(["variant", "setting", "unseen_label", "state"],
                                                                  dropna=False, sort=False):
            seeds = ", ".join(str(x) for x in sorted(g["seed"].unique()))
            label = settings[setting].label if setting in settings else setting
            extra = ""
            if output_has_unseen_axis(self.plan, output):
                extra = f", unseen shots {unseen}"
            why = state
            errs = {self.errors[k] for k in g["key"] if k in self.errors}
            if errs:
                why += f" ({'; '.join(sorted(errs))[:200]})"
            lines.append(f"{variant} · {label}{extra} · seeds {seeds}: {why}")
        return lines

    def keys_of(self, output: str, done_only: bool = True) -> list[str]:
        ks = {a.key for a in self.plan.for_output(output)}
        if done_only:
            ks = {k for k in ks if self.states.get(k) == "done"}
        return sorted(ks)


def output_has_unseen_axis(plan: Plan, output: str) -> bool:
    return plan.config["outputs"][output]["kind"] == "few_shot"

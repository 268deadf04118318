"""Analyses that deliberately step outside the protocol to measure what breaking it costs.

**Selection bias** (an analysis, never a protocol result, never in Table 1). MRM's official code
evaluates on the *test* halves after every epoch and reports the best test accuracy over those
evaluations (``train.py``: the epoch with the highest overall accuracy; seen/unseen at that epoch).
This module reruns a method on the engine's own views with a per-epoch hook: the method calls
``self.on_epoch(epoch, self)`` after each training epoch, and the hook — analysis code, not method
code — adapts the current model to every user's support, scores the test queries and computes the
per-user accuracies with the engine's own scoring. The method never sees a label; the analysis
does, which is exactly the leak being measured. The per-epoch trajectories are stored under
``RESULTS/analysis/selection_bias/<cell key>.parquet`` (resumable) and
:mod:`bench.reports.selection_bias` renders the official number next to the honest one.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError
from bench.metrics import pair_credit, split_metrics, user_accuracy

ANALYSIS_DIR = Path("analysis") / "selection_bias"


def trajectory_path(results: Path, key: str) -> Path:
    return Path(results) / ANALYSIS_DIR / f"{key}.parquet"


def _write(frame: pd.DataFrame, path: Path) -> None:
    from bench.store import atomic_write_bytes

    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    frame.to_parquet(buf, index=False)
    atomic_write_bytes(buf.getvalue(), path)


def evaluate_split(method, support, queries, a_is_chosen, seen: np.ndarray) -> dict[str, float]:
    """Adapt to every user's support, score the test queries, split-level metrics (engine scoring)."""
    method.adapt(support)
    margin = np.asarray(method.score(queries), dtype=np.float64)
    _, _, acc = user_accuracy(queries.user, pair_credit(margin, a_is_chosen), len(seen))
    return split_metrics(seen, acc)


def per_epoch_trajectory(cls, params: dict[str, Any], ds, split, shots, unseen_shots, device: str = "cpu",
                         threads: int | None = None) -> pd.DataFrame:
    """Fit once with the per-epoch hook; one record per epoch plus the final (honest) evaluation."""
    from bench.runner import make_context, pair_view, query_view, held_out_mask

    ctx = make_context(ds, split.seed, device, threads)
    method = cls(**params)
    seen_train = pair_view(ds, split, split.budget_mask(shots, 0) & split.seen[split.user_index])
    support = pair_view(ds, split, split.budget_mask(shots, unseen_shots))
    queries, a_is_chosen = query_view(ds, split, held_out_mask(ds, split, None), with_truth="oracle" in cls.requires)
    records: list[dict[str, Any]] = []

    def on_epoch(epoch: int, model) -> None:
        rec = evaluate_split(model, support, queries, a_is_chosen, split.seen)
        rec.update(epoch=int(epoch), stage="epoch")
        records.append(rec)

    method.on_epoch = on_epoch
    try:
        method.fit(seen_train, ctx)
    finally:
        method.on_epoch = None
    if not records:
        raise BenchError(
            f"method '{cls.name}' never called on_epoch during fit",
            hint="the selection-bias analysis needs a method that calls self.on_epoch(epoch, self) after each epoch",
        )
    final = evaluate_split(method, support, queries, a_is_chosen, split.seen)
    final.update(epoch=int(records[-1]["epoch"]), stage="final")
    records.append(final)
    frame = pd.DataFrame.from_records(records)
    frame.insert(0, "split_seed", int(split.seed))
    frame["n_seen"] = int(split.seen.sum())
    frame["n_unseen"] = int((~split.seen).sum())
    return frame


def run_selection_bias(job, results: Path, log: Callable[[str], None] = print,
                       progress: Callable[[str, int, int], None] | None = None, device: str = "cpu",
                       threads: int | None = None) -> dict[str, Any]:
    """Per-epoch trajectories for every seed of an AnalysisJob (missing ones only)."""
    from bench.datasets import load_dataset
    from bench.runner import RunConfig, RunSummary, plan
    from bench.splits import load_or_create_split
    from bench.store import ResultsStore

    ds = load_dataset(job.dataset)
    rc = RunConfig(methods=[job.method], dataset=job.dataset, seeds=job.seeds, results=Path(results), shots=job.shots,
                   unseen_shots=[job.unseen_shots], params={job.method: dict(job.overrides)})
    groups = plan(rc, ds, RunSummary())
    store = ResultsStore(results)
    done, failed = 0, []
    todo = [g for g in groups if not trajectory_path(results, g.cells[0].key).exists()]
    log(f"selection-bias analysis ({job.method} on {ds.name}): {len(groups) - len(todo)} cached, {len(todo)} to run")
    for i, g in enumerate(todo):
        key = g.cells[0].key
        if progress:
            progress(f"selection bias · {job.method} seed {g.seed}", i, len(todo))
        split = load_or_create_split(results, ds, g.seed, 0.5)
        t0 = time.perf_counter()
        try:
            traj = per_epoch_trajectory(g.cls, g.params, ds, split, g.shots, g.cells[0].unseen_shots, device, threads)
        except KeyboardInterrupt:
            raise
        except BenchError as e:
            failed.append(f"seed {g.seed}: {e.message}")
            log(f"[error] selection-bias analysis, seed {g.seed}: {e.message}")
            break  # the same method will not call the hook on other seeds either
        except Exception as e:  # a method bug: record and go on with the other seeds
            failed.append(f"seed {g.seed}: {type(e).__name__}: {e}")
            log(f"[error] selection-bias analysis, seed {g.seed}: {type(e).__name__}: {e}")
            continue
        traj.insert(0, "cell", key)
        traj["split_hash"] = split.hash
        traj["seconds"] = time.perf_counter() - t0
        # The engine's own cell for the same configuration, if stored: the hook must not have
        # changed training, so its overall accuracy must equal the final evaluation here.
        st = store.status(key)
        if st.state == "done":
            rows, _ = store.read_cell(store.cell_path(key))
            stored = split_metrics(rows["seen"].to_numpy(bool), rows["accuracy"].to_numpy(np.float64))["overall"]
            traj["stored_overall"] = stored
        else:
            traj["stored_overall"] = np.nan
        _write(traj, trajectory_path(results, key))
        done += 1
    if progress:
        progress("selection bias · done", len(todo), len(todo))
    return {"output": job.output, "ran": done, "failed": failed}


def load_trajectories(results: Path, keys: list[str]) -> pd.DataFrame:
    frames = [pd.read_parquet(trajectory_path(results, k)) for k in keys if trajectory_path(results, k).exists()]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()

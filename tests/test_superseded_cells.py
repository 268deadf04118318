"""A split recomputed under new method code counts once in reports and comparisons."""

import pandas as pd

from bench.store import latest_per_split


def _rows(cell, seed, acc, method="gpo", params="{}"):
    return [{"cell": cell, "dataset": "d", "features": "f", "method": method, "params": params, "split_seed": seed,
             "split_hash": f"h{seed}", "shots": pd.NA, "unseen_shots": pd.NA, "test_fraction": 0.5,
             "user": u, "accuracy": acc} for u in ("a", "b")]


def test_the_newest_cell_of_a_split_wins_and_the_rest_are_counted():
    rows = pd.DataFrame(_rows("old0", 0, 0.6) + _rows("new0", 0, 0.7) + _rows("only1", 1, 0.5)
                        + _rows("other-params", 0, 0.9, params='{"lr": 1}'))
    metas = [{"key": "old0", "finished_at": 10.0}, {"key": "new0", "finished_at": 20.0},
             {"key": "only1", "finished_at": 5.0}, {"key": "other-params", "finished_at": 1.0}]
    kept, dropped = latest_per_split(rows, metas)
    assert dropped == 1
    assert set(kept["cell"]) == {"new0", "only1", "other-params"}  # other parameters are another variant
    assert len(kept) == 6


def test_nothing_to_drop_returns_the_rows_unchanged():
    rows = pd.DataFrame(_rows("c0", 0, 0.6) + _rows("c1", 1, 0.7))
    kept, dropped = latest_per_split(rows, [{"key": "c0", "finished_at": 1.0}, {"key": "c1", "finished_at": 2.0}])
    assert dropped == 0 and kept.equals(rows)
    empty, n = latest_per_split(pd.DataFrame(columns=["cell"]), [])
    assert n == 0 and len(empty) == 0

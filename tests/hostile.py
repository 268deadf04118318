"""Shared helpers of the hostile-input suite (tests/test_hostile_*.py).

A *case* is one hostile input: a builder that writes it, what must happen (an error whose
message matches ``expect`` and that carries a hint, or acceptance with a check), and a one-line
description for the table in docs/reliability.md § "Bad inputs" (``python -m tests.hostile``
prints that table from the cases themselves).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.errors import BenchError


@dataclass(frozen=True)
class Case:
    id: str
    input: str  # what the hostile input is, in words
    build: Callable[[Path], Any]
    expect: str | None = None  # regex of the error message; None: the input is accepted
    outcome: str = ""  # what happens, in words (defaults to the regex)
    check: Callable[..., None] | None = None  # extra checks on an accepted dataset

    def __repr__(self) -> str:  # pytest ids
        return self.id


@dataclass(frozen=True)
class Load:
    """Returned by a builder whose input must be loaded from another path than its directory."""

    path: Path


def assert_clear_error(exc: BaseException, pattern: str) -> None:
    """A BenchError (DataError, …) whose message matches and whose hint names a fix."""
    assert isinstance(exc, BenchError), f"{type(exc).__name__}: {exc}"
    assert re.search(pattern, exc.message), f"{exc.message!r} does not match {pattern!r}"
    assert exc.hint and len(exc.hint.strip()) >= 8, f"no fix in {exc!s}"


# ---------------------------------------------------------------------------- BYO writers


def pairs_table(n_users: int = 3, per_user: int = 4, rm: bool = False) -> pd.DataFrame:
    rows = []
    rng = np.random.default_rng(7)
    for u in range(n_users):
        for i in range(per_user):
            k = len(rows)
            rec = {"user": f"u{u}", "pair_id": f"p{k}", "group": f"g{i // 2}", "chosen": 2 * k, "rejected": 2 * k + 1}
            if rm:
                rec["rm_chosen"] = float(rng.standard_normal())
                rec["rm_rejected"] = float(rng.standard_normal())
            rows.append(rec)
    return pd.DataFrame(rows)


def feature_matrix(rows: int, dim: int = 4, dtype=np.float32, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, dim)).astype(dtype)


def write_pairs(d: Path, pairs: pd.DataFrame | list[dict], fmt: str = "parquet") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "parquet":
        pd.DataFrame(pairs).to_parquet(d / "pairs.parquet", index=False)
    elif fmt == "csv":
        pd.DataFrame(pairs).to_csv(d / "pairs.csv", index=False)
    else:
        recs = pairs.to_dict("records") if isinstance(pairs, pd.DataFrame) else pairs
        with open(d / "pairs.jsonl", "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r) + "\n")
    return d / f"pairs.{fmt}"


def write_features(d: Path, arr: np.ndarray, fmt: str = "npy") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if fmt == "npy":
        np.save(d / "features.npy", arr, allow_pickle=False)
        return d / "features.npy"
    from safetensors.numpy import save_file

    save_file({"features": np.ascontiguousarray(arr)}, str(d / "features.safetensors"))
    return d / "features.safetensors"


def byo(
    d: Path,
    pairs: pd.DataFrame | list[dict] | None = None,
    feats: np.ndarray | None = None,
    fmt: str = "parquet",
    ffmt: str = "npy",
    yaml: str | None = None,
    no_features: bool = False,
) -> Path:
    """A valid BYO directory (3 users × 4 pairs, 24 feature rows) unless told otherwise."""
    pairs = pairs_table() if pairs is None else pairs
    write_pairs(d, pairs, fmt)
    if not no_features:
        write_features(d, feature_matrix(2 * len(pairs)) if feats is None else feats, ffmt)
    if yaml is not None:
        (d / "dataset.yaml").write_text(yaml, encoding="utf-8")
    return d


def rewrite(path: Path, fn: Callable[[bytes], bytes]) -> None:
    path.write_bytes(fn(path.read_bytes()))


def edit_jsonl(path: Path, line: int, fn: Callable[[dict], Any]) -> None:
    lines = path.read_text(encoding="utf-8").splitlines()
    rec = json.loads(lines[line])
    fn(rec)
    lines[line] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------- the docs table


def _md(s: str) -> str:
    return s.replace("|", "\\|").replace("\n", " ")


def table_rows() -> list[tuple[str, str, str, str]]:
    """(input, loader, what happens, test) for every case of the suite."""
    from tests import test_hostile_inputs as a
    from tests import test_hostile_loaders as b

    out = []
    for module in (a, b):
        for loader, test, cases in module.CASE_TABLES:
            for c in cases:
                what = _gist(c)
                out.append((c.input, loader, what, f"`{module.__name__.split('.')[-1]}::{test}[{c.id}]`"))
        for row in module.EXTRA_ROWS:
            out.append(row)
    return out


def _gist(c: Case) -> str:
    if c.outcome:
        return c.outcome
    if c.expect is None:
        return "accepted"
    return "error: " + re.sub(r"\\(.)", r"\1", c.expect).replace(".*", " … ")


def main(argv: list[str] | None = None) -> None:
    import argparse

    ap = argparse.ArgumentParser(description="print the table of docs/reliability.md § Bad inputs")
    ap.add_argument("--before", help="JSON from tests/hostile_before.py: how main behaved on each case")
    args = ap.parse_args(argv)
    before = {}
    if args.before:
        raw = json.loads(Path(args.before).read_text())
        before = {k.split("/")[-1].replace(".py::", "::"): v for k, v in raw.items()}
    head = "| # | input | loader(s) | what happens | test |" + (" before (main) |" if before else "")
    print(head)
    print("| --- " * (6 if before else 5) + "|")
    for i, (inp, loader, what, test) in enumerate(table_rows(), 1):
        row = f"| {i} | {_md(inp)} | {_md(loader)} | {_md(what)} | {test} |"
        if before:
            row += f" {before.get(test.strip('`'), '?')} |"
        print(row)


if __name__ == "__main__":
    main()

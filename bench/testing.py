"""The method contract, shipped with bench: run it on any installed or local method.

    python -m bench.testing usermean                       # an installed plugin (entry point)
    python -m bench.testing ./my_method.py:MyMethod        # a local file
    python -m bench.testing usermean --no-determinism      # skip the two `bench run` processes

or from a plugin's own test suite (pytest)::

    from bench.testing import check_method

    def test_usermean_meets_the_bench_contract():
        check_method("usermean").assert_ok()

It needs nothing but an installed bench (no clone, no ``tests/``, no optional extras): the checks
run the method with its ``test_params`` on its ``test_dataset`` (default: a tiny synthetic
PRISM-like set generated in about a second) and are the ones ``tests/test_contract.py`` runs on
every registered method:

* ``card`` — the card (``<module>.md`` beside the code) has every section;
* ``init`` — ``__init__`` only stores its parameters, and they are JSON-serialisable;
* ``fit_adapt_score`` — margins of the right shape, finite, identical for the same seed;
* ``adapt_keeps_fit`` — adapting to other supports does not change what ``fit`` learned;
* ``supports`` — unseen users with 0, 1 and 3 support pairs;
* ``param_count`` — the declared formula equals the trained tensors' count
  (``trained_param_count()``; a method that returns None is reported as *skipped*, not passed);
* ``antisymmetry`` — swapping the options negates the margins (unless ``antisymmetric = False``);
* ``determinism`` — the same ``bench run`` twice, in fresh processes with different
  ``PYTHONHASHSEED``, writes identical results apart from the volatile fields of
  :mod:`bench.determinism` (only for the named method).

Exit code of ``python -m bench.testing``: 0 when nothing failed, 1 when a check failed, 2 on bad
input (an unknown method, say).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

#: the dataset a method's checks run on unless it sets ``test_dataset``
TEST_DATASET = "synthetic-prism:dim=32,users=40"
CARD_SECTIONS = ("## Paper", "## Official code", "## Settings", "## Unseen users", "## Deviations", "## Parameters")
UNSEEN = "0,3"  # the two budgets of the determinism run: no support, and a few pairs


class Skip(Exception):
    """A check that does not apply (the reason is reported)."""


@dataclass
class CheckResult:
    name: str
    status: str  # "pass", "fail", "skip"
    detail: str = ""
    seconds: float = 0.0


@dataclass
class Report:
    method: str
    results: list[CheckResult] = field(default_factory=list)

    @property
    def failed(self) -> list[CheckResult]:
        return [r for r in self.results if r.status == "fail"]

    @property
    def ok(self) -> bool:
        return not self.failed

    def lines(self) -> list[str]:
        out = []
        for r in self.results:
            line = f"{r.status.upper():4}  {r.name:<16} {r.seconds:5.1f} s"
            if r.detail:
                line += f"  {r.detail}"
            out.append(line)
        n = {s: sum(r.status == s for r in self.results) for s in ("pass", "fail", "skip")}
        out.append(f"{self.method}: {n['pass']} passed, {n['fail']} failed, {n['skip']} skipped")
        return out

    def assert_ok(self) -> None:
        if not self.ok:
            raise AssertionError("\n".join(f"{r.name}: {r.detail}" for r in self.failed))


# ---------------------------------------------------------------------------- helpers


def load(name: str) -> type:
    from bench.registry import load_method

    return load_method(name)


def dataset_for(cls: type, dataset: str | None = None):
    """The method's test dataset, loaded; :class:`Skip` if it cannot serve the method here."""
    from bench.datasets import load_dataset
    from bench.runner import check_capabilities

    spec = dataset or getattr(cls, "test_dataset", None) or TEST_DATASET
    ds = load_dataset(spec)
    why = check_capabilities(cls, ds)
    if why:
        raise Skip(f"{cls.name} {why}")
    return ds


def _make(cls: type, **extra):
    return cls(**{**cls.test_params, **extra})


# ---------------------------------------------------------------------------- the checks
# Each takes the method class (and an optional dataset spec) and raises AssertionError or Skip.


def check_card(cls: type, dataset: str | None = None) -> None:
    card = cls.card()
    assert card, f"{cls.name} has no card at {cls.card_path()} (a packaged plugin must ship it: package-data)"
    missing = [s for s in CARD_SECTIONS if s not in card]
    assert not missing, f"{cls.name}'s card lacks {', '.join(repr(s) for s in missing)}"


def check_init(cls: type, dataset: str | None = None) -> None:
    m = _make(cls)
    params = m.get_params()
    assert set(params) == set(cls.param_names()), "get_params() must return exactly the __init__ parameters"
    for k, v in cls.test_params.items():
        assert params[k] == v, f"parameter {k} stored as {params[k]!r}, given {v!r}"
    try:
        json.dumps(params)
    except TypeError as e:
        raise AssertionError(f"parameters must be JSON-serialisable (they are part of the cell key): {e}") from None
    fitted = [k for k in vars(m) if k.endswith("_")]
    assert not fitted, f"fitted attributes must not exist before fit: {fitted}"


def check_fit_adapt_score(cls: type, dataset: str | None = None) -> None:
    from bench.runner import run_single

    ds = dataset_for(cls, dataset)
    r1 = run_single(_make(cls), ds, seed=0)
    n = len(r1.queries)
    assert r1.margin.shape[0] == n and r1.margin.ndim in (1, 2), f"score() returned shape {r1.margin.shape} for {n} queries"
    assert np.isfinite(r1.margin).mean() > 0.99, "more than 1 % of the margins are NaN or infinite"
    r2 = run_single(_make(cls), ds, seed=0)
    assert np.array_equal(r1.margin, r2.margin, equal_nan=True), "the same seed gave different margins"
    acc = r1.per_user.loc[r1.per_user["n_test"] > 0, "accuracy"]
    assert acc.between(0, 1).all(), "a user's accuracy is not in [0, 1]"


def check_adapt_keeps_fit(cls: type, dataset: str | None = None) -> None:
    from bench.runner import pair_view, run_single
    from bench.splits import make_split

    ds = dataset_for(cls, dataset)
    split = make_split(ds, 1)
    r = run_single(_make(cls), ds, seed=1, shots=None, unseen_shots=None)
    m = r.method
    m.adapt(pair_view(ds, split, split.budget_mask(None, 1)))
    m.adapt(pair_view(ds, split, split.budget_mask(None, None)))
    again = np.asarray(m.score(r.queries), dtype=np.float64)
    np.testing.assert_allclose(again, r.margin, rtol=1e-6, atol=1e-9, err_msg="adapt() changed what fit() learned")


def check_supports(cls: type, dataset: str | None = None) -> None:
    from bench.runner import run_single

    ds = dataset_for(cls, dataset)
    for k in (0, 1, 3):
        r = run_single(_make(cls), ds, seed=2, unseen_shots=k)
        unseen = ~r.per_user["seen"].to_numpy()
        assert (r.per_user.loc[unseen, "n_support"] <= k).all()
        assert np.isfinite(r.margin).mean() > 0.99, f"with {k} support pairs per unseen user, margins are not finite"


def check_param_count(cls: type, dataset: str | None = None) -> None:
    from bench.runner import run_single

    ds = dataset_for(cls, dataset)
    r = run_single(_make(cls), ds, seed=0)
    formula = r.method.param_count()
    assert formula.shared >= 0 and formula.per_user >= 0, f"negative parameter count {formula}"
    trained = r.method.trained_param_count()
    if trained is None:
        raise Skip("trained_param_count() returns None: implement it to check param_count() against the fitted tensors")
    assert trained == formula, f"param_count() says {formula} but the trained tensors hold {trained}"


def check_antisymmetry(cls: type, dataset: str | None = None) -> None:
    from bench.runner import run_single

    if not getattr(cls, "antisymmetric", True):
        raise Skip(f"{cls.name} judges pairs jointly (antisymmetric = False)")
    ds = dataset_for(cls, dataset)
    r = run_single(_make(cls), ds, seed=0)
    q = r.queries
    swapped = replace(q, a=q.b, b=q.a, truth_a=q.truth_b, truth_b=q.truth_a)
    np.testing.assert_allclose(
        np.asarray(r.method.score(swapped)), -r.margin, rtol=1e-5, atol=1e-6, err_msg="swapping a and b did not negate the margins"
    )


def run_command(spec: str, cls: type, results: Path, dataset: str | None = None) -> list[str]:
    """``bench run`` of one method with its test_params (one split, two unseen budgets)."""
    ds_spec = dataset or getattr(cls, "test_dataset", None) or TEST_DATASET
    cmd = [sys.executable, "-m", "bench", "run", "--methods", spec, "--dataset", ds_spec, "--seeds", "0",
           "--unseen-shots", UNSEEN, "--results", str(results), "--no-table"]
    for k, v in cls.test_params.items():
        cmd += ["--param", f"{cls.name}.{k}={json.dumps(v)}"]
    return cmd


def check_determinism(cls: type, dataset: str | None = None, spec: str | None = None) -> None:
    from bench.determinism import compare_results

    dataset_for(cls, dataset)  # Skip early when the method cannot run here
    spec = spec or cls.name
    if spec != cls.name and not spec.endswith(".py") and ":" in spec:
        spec = str(Path(spec.rsplit(":", 1)[0]).resolve()) + ":" + spec.rsplit(":", 1)[1]
    elif spec.endswith(".py"):
        spec = str(Path(spec).resolve())
    with tempfile.TemporaryDirectory(prefix="bench-determinism-") as tmp:
        root = Path(tmp)
        for run, hashseed in (("a", "1"), ("b", "2")):
            env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONUNBUFFERED": "1"}
            cmd = run_command(spec, cls, root / run, dataset)
            p = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root, timeout=1800)
            if p.returncode != 0:
                raise AssertionError(f"`{' '.join(cmd[2:])}` exited {p.returncode}:\n{(p.stdout + p.stderr)[-3000:]}")
        failed = sorted(q.name for q in root.glob("*/cells/*.failed.json"))
        assert not failed, f"failed cells: {failed} (see their tracebacks)"
        cells = sorted((root / "a" / "cells").glob("*.parquet"))
        assert len(cells) == len(UNSEEN.split(",")), f"expected {len(UNSEEN.split(','))} cells, found {len(cells)}"
        diffs = compare_results(root / "a", root / "b")
        assert not diffs, "two identical runs differ (draw randomness from ctx.seed; name timing fields *_seconds):\n" + "\n".join(diffs[:20])


CHECKS: dict[str, Callable[..., None]] = {
    "card": check_card,
    "init": check_init,
    "fit_adapt_score": check_fit_adapt_score,
    "adapt_keeps_fit": check_adapt_keeps_fit,
    "supports": check_supports,
    "param_count": check_param_count,
    "antisymmetry": check_antisymmetry,
    "determinism": check_determinism,
}


def check_method(
    name: str, *, dataset: str | None = None, determinism: bool = True, only: list[str] | None = None,
    on_result: Callable[[CheckResult], None] | None = None,
) -> Report:
    """Run the contract checks on one method (a registered name or ``path.py[:Class]``)."""
    from bench.errors import BenchError

    cls = load(name)
    selected = list(only or CHECKS)
    unknown = [c for c in selected if c not in CHECKS]
    if unknown:
        raise BenchError(f"unknown check {', '.join(unknown)}", hint=f"checks: {', '.join(CHECKS)}")
    if not determinism and "determinism" in selected:
        selected.remove("determinism")
    report = Report(cls.name)
    for check in selected:
        t0 = time.perf_counter()
        try:
            if check == "determinism":
                CHECKS[check](cls, dataset, spec=name)
            else:
                CHECKS[check](cls, dataset)
            res = CheckResult(check, "pass")
        except Skip as e:
            res = CheckResult(check, "skip", str(e))
        except AssertionError as e:
            res = CheckResult(check, "fail", str(e) or "assertion failed")
        except Exception as e:  # the method raised: a failed check, with what it raised
            res = CheckResult(check, "fail", f"{type(e).__name__}: {e}")
        res.seconds = time.perf_counter() - t0
        report.results.append(res)
        if on_result is not None:
            on_result(res)
    return report


def main(argv: list[str] | None = None) -> int:
    from bench.errors import BenchError

    p = argparse.ArgumentParser(
        prog="python -m bench.testing",
        description="Run bench's method contract on one method (an installed plugin or path.py:Class).",
    )
    p.add_argument("method", help="a registered method name, or ./my_method.py[:ClassName]")
    p.add_argument("--dataset", default=None, help=f"dataset spec (default: the method's test_dataset, else {TEST_DATASET})")
    p.add_argument("--no-determinism", action="store_true", help="skip the check that runs `bench run` twice")
    p.add_argument("--only", default=None, help=f"comma-separated checks: {', '.join(CHECKS)}")
    args = p.parse_args(argv)
    only = [c.strip() for c in args.only.split(",") if c.strip()] if args.only else None
    try:
        report = check_method(
            args.method, dataset=args.dataset, determinism=not args.no_determinism, only=only,
            on_result=lambda r: print(Report("", [r]).lines()[0], flush=True),
        )
    except BenchError as e:
        print(f"error: {e.message}", file=sys.stderr)
        if e.hint:
            print(f"  fix: {e.hint}", file=sys.stderr)
        return 2
    print(report.lines()[-1])
    return 0 if report.ok else 1


if __name__ == "__main__":
    sys.exit(main())

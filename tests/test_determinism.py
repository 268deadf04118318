"""Determinism: the same ``bench run`` command twice gives the same result files and tables.

Every registered method (parametrised over the registry, so a new method is included
automatically) runs twice, each time in a fresh ``python -m bench run`` process with its tiny
``test_params`` on its ``test_dataset``, into two empty results directories. The two processes get
different ``PYTHONHASHSEED`` values, so a result that depends on the iteration order of a set of
strings cannot pass by luck. Cells must be identical except the volatile fields defined in
:mod:`bench.determinism` (timings, the worker's host:pid), every other file byte-identical, and
``bench report`` must render identical tables. ``--deterministic`` is checked for being recorded
in provenance and set in the worker processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from bench.determinism import VOLATILE_META, compare_cells, compare_results, deterministic_mode, stable_meta
from bench.registry import METHOD_GROUP, describe
from tests.conftest import TINY_PRISM
from tests.plugins.fake_methods import register_fakes

ROOT = Path(__file__).resolve().parent.parent
METHODS = sorted(i.name for i in describe(METHOD_GROUP) if i.error is None)
UNSEEN = "0,3"  # two cells per method: no support and a few support pairs (the adapt path)


def _groups() -> dict[str, list[str]]:
    """Methods by the dataset their contract tests run on (methods that cannot run here are left out)."""
    from bench.datasets import load_dataset
    from bench.registry import load_method
    from bench.runner import check_capabilities

    out: dict[str, list[str]] = {}
    for name in METHODS:
        cls = load_method(name)
        spec = getattr(cls, "test_dataset", None) or TINY_PRISM
        if check_capabilities(cls, load_dataset(spec)) is None:
            out.setdefault(spec, []).append(name)
    return out


def command(spec: str, names: list[str], results: Path, *extra: str) -> list[str]:
    """``bench run`` for ``names`` on ``spec`` with each method's test_params (one split, two budgets)."""
    from bench.registry import load_method

    cmd = [sys.executable, "-m", "bench", "run", "--methods", ",".join(names), "--dataset", spec, "--seeds", "0",
           "--unseen-shots", UNSEEN, "--results", str(results), "--no-table", *extra]
    for name in names:
        for k, v in load_method(name).test_params.items():
            cmd += ["--param", f"{name}.{k}={json.dumps(v)}"]
    return cmd


def _run_all(cmds: list[list[str]], hashseed: str) -> None:
    """Run the commands side by side (each its own process); all must succeed."""
    env = {**os.environ, "PYTHONHASHSEED": hashseed, "PYTHONUNBUFFERED": "1"}
    procs = [(cmd, subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)) for cmd in cmds]
    for cmd, p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, f"{' '.join(cmd)}\n{out[-2000:]}\n{err[-4000:]}"


@pytest.fixture(scope="module")
def twice(tmp_path_factory):
    """Results directories of two runs of the same commands; (a, b, groups)."""
    root = tmp_path_factory.mktemp("determinism")
    groups = _groups()
    for run_dir, hashseed in (("a", "1"), ("b", "2")):
        _run_all([command(spec, names, root / run_dir) for spec, names in groups.items()], hashseed)
    return root / "a", root / "b", groups


def _cells_of(results: Path) -> dict[str, list[Path]]:
    from bench.store import ResultsStore

    store = ResultsStore(results)
    out: dict[str, list[Path]] = {}
    for p in sorted(store.cells_dir.glob("*.parquet")):
        _rows, meta = store.read_cell(p)
        out.setdefault(meta["cell"]["method"], []).append(p)
    return out


@pytest.mark.parametrize("name", METHODS)
def test_same_command_twice_gives_identical_results(twice, name):
    a, b, groups = twice
    if not any(name in names for names in groups.values()):
        pytest.skip(f"{name} cannot run on this machine")
    fails = sorted(p.name for p in (a / "cells").glob("*.failed.json")) + sorted(p.name for p in (b / "cells").glob("*.failed.json"))
    assert not fails, f"failed cells: {fails}"
    ca, cb = _cells_of(a), _cells_of(b)
    assert len(ca.get(name, [])) == len(UNSEEN.split(",")), f"{name}: cells {ca.get(name)}"
    assert [p.name for p in ca[name]] == [p.name for p in cb.get(name, [])]
    diffs = {p.name: compare_cells(p, b / "cells" / p.name) for p in ca[name]}
    assert all(not d for d in diffs.values()), f"{name} is not deterministic: {diffs}"


def test_every_file_and_the_rendered_tables_are_identical(twice, cli, tmp_path):
    a, b, _ = twice
    assert compare_results(a, b) == []
    splits = sorted(p.relative_to(a) for p in (a / "splits").rglob("*.parquet"))
    assert splits and all((a / s).read_bytes() == (b / s).read_bytes() for s in splits)
    out = {}
    for d in (a, b):
        code, text, err = cli("report", "--results", d, "--latex", tmp_path / f"{d.name}.tex")
        assert code == 0, err
        out[d.name] = (text.replace(str(d), "RESULTS").replace(str(tmp_path / f"{d.name}.tex"), "TEX"),
                       (tmp_path / f"{d.name}.tex").read_text())
    assert "Overall" in out["a"][0]
    assert out["a"] == out["b"]


def test_llm_rerun_on_a_warm_response_cache_differs_only_in_cost_accounting(cli, tmp_path, monkeypatch):
    """With the response cache on (the default), the second run is answered from the cache: its
    scores and rows are the first run's; only what the run *did* (backend calls, cache hits, tokens) differs."""
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    spec = "text-prefs:users=8,pairs=6,features=none"
    for d in ("cold", "warm"):
        code, out, err = cli("run", "--methods", "synthesizeme", "--dataset", spec, "--seeds", "0", "--unseen-shots", UNSEEN,
                             "--results", tmp_path / d, "--no-table", "--param", "synthesizeme.backend=scripted",
                             "--param", "synthesizeme.model=hash", "--param", "synthesizeme.cache=true")
        assert code == 0, out + err
    diffs = compare_results(tmp_path / "cold", tmp_path / "warm")
    assert any("column llm_calls" in d for d in diffs) and any("column llm_cache_hits" in d for d in diffs)
    assert not any(f"column {c}:" in d for d in diffs for c in ("accuracy", "n_correct", "persona", "parse_failure_rate"))
    assert compare_results(tmp_path / "cold", tmp_path / "warm", warm_cache=True) == []


def test_comparison_sees_every_non_volatile_difference(tmp_path):
    """The comparison can fail: a changed row, column or provenance field is reported; timings are not."""
    import pandas as pd

    from bench.store import ResultsStore

    rows = pd.DataFrame({
        "cell": "k", "dataset": "d", "features": "f", "split_seed": 0, "split_hash": "h",
        "shots": pd.array([None, None], dtype="Int64"), "unseen_shots": pd.array([3, 3], dtype="Int64"),
        "test_fraction": float("nan"), "method": "m", "params": "{}", "user": ["u0", "u1"], "seen": [True, False],
        "n_support": [4, 3], "n_test": [5, 5], "n_correct": [3.0, 4.0], "accuracy": [0.6, 0.8],
        "llm_seconds": [0.1, 0.2],
    })
    meta = {"cell": {"method": "m"}, "provenance": {"worker": "host:1", "threads": 2, "deterministic": False},
            "timing": {"fit_s": 1.0}, "finished_at": 1.0, "method_meta": {"stages": {"x": {"seconds": 1.0, "calls": 2}}}}

    def write(name, rows, meta):
        store = ResultsStore(tmp_path / name)
        store.ensure_writable()
        return store.write_cell("k", rows, meta)

    base = write("base", rows, meta)
    volatile = {**meta, "provenance": {**meta["provenance"], "worker": "other:2"}, "timing": {"fit_s": 9.0}, "finished_at": 5.0,
                "method_meta": {"stages": {"x": {"seconds": 7.0, "calls": 2}}}}
    assert compare_cells(base, write("volatile", rows.assign(llm_seconds=[0.5, 0.6]), volatile)) == []

    tiny = rows.copy()
    tiny.loc[1, "accuracy"] = 0.8 + 2**-52  # one ulp
    assert any("column accuracy: 1 of 2 rows differ" in d for d in compare_cells(base, write("ulp", tiny, meta)))
    prov = {**meta, "provenance": {**meta["provenance"], "threads": 1}}
    assert any("provenance.threads" in d for d in compare_cells(base, write("threads", rows, prov)))
    calls = {**meta, "method_meta": {"stages": {"x": {"seconds": 1.0, "calls": 3}}}}
    assert any("method_meta.stages.x.calls" in d for d in compare_cells(base, write("calls", rows, calls)))
    assert any("columns" in d for d in compare_cells(base, write("extra", rows.assign(extra=1), meta)))
    # whole directories: a missing or changed split file is reported too
    (tmp_path / "base" / "splits").mkdir()
    (tmp_path / "base" / "splits" / "s.parquet").write_bytes(b"x")
    assert compare_results(tmp_path / "base", tmp_path / "volatile") == ["only in " + str(tmp_path / "base") + ": splits/s.parquet"]
    shutil.copytree(tmp_path / "base" / "splits", tmp_path / "volatile" / "splits")
    (tmp_path / "volatile" / "splits" / "s.parquet").write_bytes(b"y")
    assert compare_results(tmp_path / "base", tmp_path / "volatile") == ["splits/s.parquet: files differ"]


def test_volatile_fields_are_only_timings_and_the_worker():
    assert {p[0] for p in VOLATILE_META} == {"finished_at", "timing", "provenance", "rows_hash", "meta_hash"}
    meta = {"provenance": {"worker": "h:1", "git_commit": "abc", "threads": 2}, "timing": {}, "finished_at": 0, "rows_hash": "x", "meta_hash": "y",
            "method_meta": {"engine_seconds": 1, "n": 2, "sub": [{"seconds": 3, "m": 4}]}}
    assert stable_meta(meta) == {"provenance": {"git_commit": "abc", "threads": 2}, "method_meta": {"n": 2, "sub": [{"m": 4}]}}


# ---------------------------------------------------------------------------- --deterministic


@pytest.fixture
def fakes(monkeypatch):
    from bench import registry

    monkeypatch.setattr(registry, "_group", registry._group)  # restored after the test
    register_fakes()


def _metas(results):
    from bench.store import ResultsStore

    rows, metas, problems = ResultsStore(results).load()
    assert not problems
    return metas


@pytest.mark.parametrize("jobs", ["1", "2"])
def test_deterministic_flag_is_set_in_the_worker_and_recorded(cli, tmp_path, fakes, jobs):
    import torch

    before = torch.are_deterministic_algorithms_enabled()
    code, out, err = cli("run", "--methods", "probe,oracle", "--dataset", TINY_PRISM, "--seeds", "0", "--results", tmp_path / "det",
                         "--deterministic", "--jobs", jobs, "--no-table")
    assert code == 0, out + err
    metas = _metas(tmp_path / "det")
    assert len(metas) == 2
    for m in metas:
        assert m["provenance"]["deterministic"] is True and m["provenance"]["torch_deterministic"] is True
    probe = next(m for m in metas if m["cell"]["method"] == "probe")["method_meta"]
    assert probe["torch_deterministic"] is True and probe["cudnn_benchmark"] is False and probe["cudnn_deterministic"] is True
    assert probe["cublas_workspace"] == ":4096:8"
    assert (probe["pid"] != os.getpid()) == (jobs == "2")  # --jobs 2: computed in a worker process
    # the mode ends with the run: nothing leaks into this process
    assert torch.are_deterministic_algorithms_enabled() == before
    assert os.environ.get("CUBLAS_WORKSPACE_CONFIG") != ":4096:8" or before

    # without the flag: recorded as off, and torch's default applies in the worker
    code, out, err = cli("run", "--methods", "probe", "--dataset", TINY_PRISM, "--seeds", "0", "--results", tmp_path / "plain",
                         "--jobs", jobs, "--no-table")
    assert code == 0, out + err
    (m,) = _metas(tmp_path / "plain")
    assert m["provenance"]["deterministic"] is False and m["method_meta"]["torch_deterministic"] is False
    # the flag is not part of the cell key: the same cell, computed with or without it
    assert sorted(p.name for p in (tmp_path / "plain" / "cells").glob("*.parquet"))[0] in {
        p.name for p in (tmp_path / "det" / "cells").glob("*.parquet")}


PAPER = """
title: determinism
repeats: 1
sources:
  synthetic:
    prism: "synthetic-prism:dim=32,users=40"
settings:
  prism: {role: prism, shots: all, unseen_shots: all, label: "PRISM"}
methods:
  bt: {label: "BT"}
  oracle: {label: "Oracle"}
outputs:
  table1:
    kind: table1
    title: "Table 1"
    settings: [prism]
    methods: [bt, oracle]
    unranked: [oracle]
"""


def test_paper_passes_deterministic_to_its_runs(cli, tmp_path):
    (tmp_path / "toy.yaml").write_text(PAPER)
    code, out, err = cli("paper", "--smoke", "--config", tmp_path / "toy.yaml", "--results", tmp_path / "res", "--deterministic")
    assert code == 0, out + err
    metas = _metas(tmp_path / "res")
    assert len(metas) == 2 and all(m["provenance"]["deterministic"] is True for m in metas)


def test_deterministic_mode_restores_the_previous_settings():
    import torch

    before = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    with deterministic_mode(True):
        assert torch.are_deterministic_algorithms_enabled() and os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
        assert torch.backends.cudnn.benchmark is False and torch.backends.cudnn.deterministic is True
    assert (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG")) == before
    with deterministic_mode(False):
        assert torch.are_deterministic_algorithms_enabled() == before[0]

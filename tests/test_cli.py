import json
import os
import signal
import subprocess
import sys
import time
from importlib.metadata import EntryPoint
from pathlib import Path

import pytest

from bench import registry
from tests.conftest import TINY_PRISM, TINY_REDDIT

FAST = ["--param", "bt.iterations=30"]


@pytest.fixture
def extra_methods(monkeypatch):
    """Register the test-only plugins in tests/plugins next to the real entry points."""
    real = registry._group.__wrapped__

    def group(name):
        eps = dict(real(name))
        if name == registry.METHOD_GROUP:
            for n, target in (("boom", "tests.plugins.fake_methods:Boom"), ("coin", "tests.plugins.fake_methods:Coin")):
                eps[n] = EntryPoint(name=n, value=target, group=name)
            eps["broken"] = EntryPoint(name="broken", value="tests.plugins.does_not_exist:Nope", group=name)
            eps["quitter"] = EntryPoint(name="quitter", value="tests.plugins.exits_on_import:Quit", group=name)
            eps["notamethod"] = EntryPoint(name="notamethod", value="json:dumps", group=name)
        if name == registry.DATASET_GROUP:
            eps["brokends"] = EntryPoint(name="brokends", value="tests.plugins.does_not_exist:load", group=name)
        return eps

    monkeypatch.setattr(registry, "_group", group)


def test_run_prints_table_then_resumes_from_store(cli, tmp_path):
    args = ["run", "--methods", "bt,oracle", "--dataset", TINY_PRISM, "--repeats", "3", "--results", tmp_path, *FAST]
    code, out, err = cli(*args)
    assert code == 0, err
    assert "6 to run" in out and "oracle" in out and "bt" in out and "Overall" in out
    code, out, _ = cli(*args)
    assert code == 0
    assert "6 cached, 0 to run" in out and "0 cells computed, 6 served" in out


def test_unknown_method_suggests(cli, tmp_path):
    code, _, err = cli("run", "--methods", "bt,orcle", "--dataset", TINY_PRISM, "--results", tmp_path)
    assert code == 2
    assert "unknown method 'orcle'" in err and "Did you mean 'oracle'" in err and "valid methods" in err


def test_unknown_dataset_suggests(cli, tmp_path):
    code, _, err = cli("run", "--dataset", "synthetic-prsm", "--results", tmp_path)
    assert code == 2 and "Did you mean 'synthetic-prism'" in err


@pytest.mark.parametrize("shots", ["0", "-3", "1.5", "many"])
def test_bad_shots(cli, tmp_path, shots):
    code, _, err = cli("run", "--dataset", TINY_REDDIT, "--shots", shots, "--results", tmp_path)
    assert code == 2 and "--shots" in err


@pytest.mark.parametrize("repeats", ["0", "-2"])
def test_bad_repeats_gives_one_line_error(cli, tmp_path, repeats):
    code, out, err = cli("run", "--repeats", repeats, "--results", tmp_path / "r")
    assert code == 2 and "usage:" not in err
    assert f"--repeats must be ≥ 1, got {int(repeats)}" in err and "fix:" in err
    assert not (tmp_path / "r").exists()


def test_budget_larger_than_data_uses_what_exists(cli, tmp_path):
    code, out, _ = cli("run", "--methods", "oracle", "--dataset", TINY_REDDIT, "--shots", "100000", "--unseen-shots", "100000",
                       "--repeats", "1", "--results", tmp_path)
    assert code == 0
    assert "have fewer than 100000 train pairs" in out and "use all they have" in out


def test_unwritable_results_error_before_work(cli, tmp_path):
    blocker = tmp_path / "f"
    blocker.write_text("")
    code, _, err = cli("run", "--methods", "oracle", "--dataset", TINY_PRISM, "--results", blocker / "sub")
    assert code == 2 and "cannot write results" in err


def test_method_a_dataset_cannot_serve(cli, tmp_path, tiny_prism):
    # rm needs stored RM scores: a bring-your-own dataset without them cannot serve it.
    import numpy as np
    import pandas as pd

    d = tmp_path / "byo"
    d.mkdir()
    pd.DataFrame({"user": ["a", "a", "b", "b"], "chosen": [0, 2, 4, 6], "rejected": [1, 3, 5, 7]}).to_parquet(d / "pairs.parquet")
    np.save(d / "features.npy", np.random.default_rng(0).standard_normal((8, 4)).astype(np.float16))
    code, _, err = cli("run", "--methods", "rm", "--dataset", d, "--results", tmp_path / "r")
    assert code == 2 and "needs rm_scores" in err
    code, out, err = cli("run", "--methods", "all", "--dataset", d, "--repeats", "1", "--results", tmp_path / "r", *FAST)
    assert "skipping rm" in out and "skipping oracle" in out


def test_corrupt_cell_is_recomputed_not_aggregated(cli, tmp_path):
    args = ["run", "--methods", "oracle", "--dataset", TINY_PRISM, "--repeats", "2", "--results", tmp_path]
    assert cli(*args)[0] == 0
    cells = sorted((tmp_path / "cells").glob("*.parquet"))
    cells[0].write_bytes(cells[0].read_bytes()[:100])
    code, out, _ = cli("report", "--results", tmp_path)
    assert "unreadable" in out and "left out" in out
    code, out, _ = cli(*args)
    assert code == 0 and "1 to run" in out and "quarantine" in out
    assert len(list((tmp_path / "cells").glob("*.parquet"))) == 2


def test_failing_method_is_recorded_and_run_continues(cli, tmp_path, extra_methods):
    code, out, _ = cli("run", "--methods", "boom,oracle", "--dataset", TINY_PRISM, "--repeats", "2", "--results", tmp_path)
    assert code == 1
    assert "2 cells failed" in out and "boom in fit" in out
    fails = list((tmp_path / "cells").glob("*.failed.json"))
    assert len(fails) == 2
    rec = json.loads(fails[0].read_text())
    assert "Traceback" in rec["traceback"] and rec["cell"]["method"] == "boom"
    assert len(list((tmp_path / "cells").glob("*.parquet"))) == 2  # the oracle cells


def test_nan_scores_count_as_wrong_and_are_recorded(cli, tmp_path, extra_methods):
    code, out, _ = cli("run", "--methods", "coin", "--dataset", TINY_PRISM, "--repeats", "1", "--results", tmp_path)
    assert code == 0
    from bench.store import ResultsStore

    rows, metas, _ = ResultsStore(tmp_path).load()
    assert metas[0]["n_invalid_scores"] > 0 and rows["n_invalid"].sum() == metas[0]["n_invalid_scores"]


def test_broken_plugin_is_listed_not_fatal(cli, extra_methods, tmp_path):
    """Plugins that fail to import (or exit while importing, or are not methods) break only themselves."""
    code, out, _ = cli("list")
    assert code == 0 and "bt" in out and "synthetic-prism" in out
    text = " ".join(out.split())
    assert "broken" in text and "ModuleNotFoundError" in text and "SystemExit: 3" in text
    assert "does not name a bench.api.Method subclass" in text and "brokends" in text
    assert "4 plugin(s) failed to load and are unavailable: broken, notamethod, quitter, brokends" in text
    code, out, _ = cli("list", "--json")
    listed = json.loads(out)
    errors = {m["name"]: m["error"] for m in listed["methods"] + listed["datasets"] if "error" in m}
    assert set(errors) == {"broken", "quitter", "notamethod", "brokends"}
    assert {m["name"] for m in listed["methods"] if "error" not in m} >= {"bt", "oracle", "mrm"}
    # asking for a broken plugin by name: a clear error naming it and the fix, no traceback
    for argv in (["--methods", "broken"], ["--methods", "bt,quitter"], ["--methods", "notamethod"], ["--dataset", "brokends"]):
        code, _, err = cli("run", *argv, "--results", tmp_path / "never")
        assert code == 2 and "Traceback" not in err, err
        assert ("failed to import" in err and "fix or uninstall" in err) or "does not name a bench.api.Method" in err, err


def test_broken_plugins_are_skipped_by_methods_all(extra_methods, tmp_path):
    """`--methods all` (skip_unavailable) runs every working method and reports the broken ones."""
    from bench.runner import RunConfig, run

    cfg = RunConfig(methods=["broken", "quitter", "notamethod", "oracle"], dataset=TINY_PRISM, seeds=[0], results=tmp_path,
                    skip_unavailable=True)
    logs: list[str] = []
    s = run(cfg, log=logs.append)
    assert (s.ran, s.failed) == (1, [])
    assert set(s.skipped) == {"broken", "quitter", "notamethod"}
    assert any("skipping broken: it is broken (plugin 'broken'" in line for line in logs)


def test_list_does_not_import_torch():
    code = "import sys; from bench.cli import main; main(['list', '--json']); assert 'torch' not in sys.modules, 'torch imported'"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_param_override_validation(cli, tmp_path):
    code, _, err = cli("run", "--methods", "bt", "--dataset", TINY_PRISM, "--param", "bt.nope=1", "--results", tmp_path)
    assert code == 2 and "has no parameter 'nope'" in err and "iterations" in err
    code, _, err = cli("run", "--methods", "bt", "--dataset", TINY_PRISM, "--param", "nope=1", "--results", tmp_path)
    assert code == 2 and "no selected method" in err


def test_card_verb(cli):
    code, out, _ = cli("card", "bt")
    assert code == 0 and "## Deviations" in out


def _run_cmd(results, seeds="0-5"):
    return [sys.executable, "-m", "bench", "run", "--methods", "bt,oracle", "--dataset", TINY_REDDIT, "--seeds", seeds,
            "--results", str(results), "--no-table", "--param", "bt.iterations=300"]


def test_sigkill_midway_then_rerun_equals_uninterrupted(tmp_path, cli):
    """A run killed with SIGKILL keeps only whole cells; the rerun finishes the rest; tables match."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    ref = tmp_path / "ref"
    subprocess.run(_run_cmd(ref), check=True, capture_output=True, env=env)
    killed = tmp_path / "killed"
    p = subprocess.Popen(_run_cmd(killed), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    deadline = time.time() + 120
    while time.time() < deadline:
        if len(list((killed / "cells").glob("*.parquet"))) >= 2:
            break
        time.sleep(0.01)
    p.send_signal(signal.SIGKILL)
    p.wait()
    n_before = len(list((killed / "cells").glob("*.parquet")))
    assert 2 <= n_before < 12
    r = subprocess.run(_run_cmd(killed), capture_output=True, text=True, env=env)
    assert r.returncode == 0, r.stderr
    assert f"{n_before} cached, {12 - n_before} to run" in r.stdout
    assert not list((killed / "cells").glob("*.tmp")) and not list((killed / "cells").glob(".*"))
    _, out_ref, _ = cli("report", "--results", ref, "--latex", tmp_path / "ref.tex")
    _, out_killed, _ = cli("report", "--results", killed, "--latex", tmp_path / "killed.tex")
    body = lambda p: "\n".join(l for l in Path(p).read_text().splitlines() if not l.startswith("%"))  # noqa: E731
    assert body(tmp_path / "ref.tex") == body(tmp_path / "killed.tex")


def test_paper_plan_skips_a_broken_plugin(cli, extra_methods, tmp_path):
    (tmp_path / "plan.yaml").write_text(
        "title: t\nrepeats: 1\nsources:\n  synthetic:\n    prism: \"" + TINY_PRISM + "\"\n"
        "settings:\n  prism: {role: prism, shots: all, unseen_shots: all, label: P}\n"
        "methods:\n  oracle: {label: Oracle}\n  broken: {label: Broken}\n"
        "outputs:\n  table1: {kind: table1, title: T, settings: [prism], methods: [oracle, broken], unranked: [oracle]}\n"
    )
    code, out, err = cli("paper", "--config", tmp_path / "plan.yaml", "--results", tmp_path / "res", "--plan")
    assert code == 0, out + err
    text = " ".join(out.split())
    assert "broken" in text and "failed to import" in text

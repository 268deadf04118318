"""Run UX: progress inside cells, plain progress lines without a terminal, 80 columns, SIGTERM,
messages after bad input, the terminal table's markers."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bench import progress
from tests.conftest import TINY_PRISM

ROOT = Path(__file__).resolve().parent.parent


def _bench(*args, env=None, timeout=300):
    e = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bench", *map(str, args)], capture_output=True, text=True, env=e,
                          cwd=ROOT, timeout=timeout)


# ---------------------------------------------------------------------------- the progress API


def test_step_without_listener_is_a_no_op():
    progress.set_sink(None)
    progress.step(1, 10, "epoch")  # nothing listens: returns, no error


def test_step_delivers_labelled_throttled_events():
    got = []
    with progress.listening(got.append), progress.unit("bt seed 3"):
        for i in range(1000):
            progress.step(i, 1000, "iteration")
        progress.step(1000, 1000, "iteration")  # the end of a loop is never dropped
    assert got[0]["label"] == "bt seed 3" and got[0]["what"] == "iteration" and got[0]["done"] == 0
    assert got[-1]["done"] == 1000 and got[-1]["total"] == 1000
    assert len(got) < 50  # throttled: a tight loop does not flood the display
    progress.step(1, 2)  # outside the block nobody listens
    assert len(got) == len(got)


def test_a_failing_listener_never_fails_the_method():
    def boom(ev):
        raise RuntimeError("display broke")

    with progress.listening(boom):
        progress.step(1, 2, "epoch")


@pytest.mark.parametrize("method,params", [("bt", {"iterations": 40}), ("lore", {"iterations": 30, "adapt_iterations": 10}),
                                           ("pal", {"epochs": 2, "adapt_epochs": 2}), ("mrm", {"epochs": 3})])
def test_reporting_progress_does_not_change_results(tiny_prism, method, params):
    from bench.registry import load_method
    from bench.runner import run_single

    cls = load_method(method)
    quiet = run_single(cls(**params), tiny_prism, seed=1).margin
    got = []
    with progress.listening(got.append), progress.unit(f"{method} seed 1"):
        loud = run_single(cls(**params), tiny_prism, seed=1).margin
    assert got, f"{method} reported no progress"
    assert {e["label"] for e in got} == {f"{method} seed 1"}
    np.testing.assert_array_equal(quiet, loud)


def test_progress_comes_back_from_worker_processes(tmp_path):
    from bench.executors import ProcessExecutor
    from bench.runner import RunConfig, run

    got = []
    cfg = RunConfig(methods=["bt"], dataset=TINY_PRISM, seeds=[0, 1], results=tmp_path, params={"bt": {"iterations": 50}})
    with progress.listening(got.append), ProcessExecutor(2, threads=1) as ex:
        s = run(cfg, executor=ex, log=lambda m: None)
    assert s.ran == 2
    labels = {e["label"] for e in got}
    assert labels == {"bt seed 0", "bt seed 1"} and all(e["what"] == "iteration" and e["total"] == 50 for e in got)


# ---------------------------------------------------------------------------- the display


def _console(buf, width=80):
    from rich.console import Console

    return Console(file=buf, width=width, soft_wrap=True, highlight=False, force_terminal=False)


def test_plain_lines_with_time_eta_when_not_a_terminal():
    from bench.runview import RunView

    buf = io.StringIO()
    with RunView(_console(buf), tty=False, every_s=0.2, estimates={"gpo seed 0": 100.0, "bt seed 0": 10.0}) as view:
        view.cells("gpo seed 0", 0, 2)
        for i in range(0, 6):
            progress.forward({"label": "gpo seed 0", "what": "step", "done": i, "total": 10, "time": time.time()})
            time.sleep(0.1)
        time.sleep(0.35)
        view.cells("gpo seed 0 finished", 1, 2)
    text = buf.getvalue()
    assert "preparing" in text.splitlines()[0]
    assert "gpo seed 0: step 5 of 10, 0:00:0" in text and "left in it" in text  # ETA from the pace of the steps
    assert "0 of 2 cells done, about" in text
    assert "gpo seed 0 finished in" in text and "(1 of 2 cells done)" in text
    assert max(len(ln) for ln in text.splitlines()) <= 80


def test_total_eta_uses_estimates_rescaled_by_finished_groups():
    from bench.runview import RunView

    view = RunView(_console(io.StringIO()), tty=False, estimates={"a seed 0": 10.0, "b seed 0": 10.0, "c seed 0": 20.0})
    assert view.total_eta() == pytest.approx(40.0, abs=0.5)
    view._finished["a seed 0"] = 20.0  # took twice its estimate: the rest is rescaled by 2
    assert view.total_eta() == pytest.approx(60.0, abs=0.5)


def test_run_without_terminal_prints_progress_lines(tmp_path):
    r = _bench("run", "--methods", "bt", "--dataset", TINY_PRISM, "--repeats", "1", "--results", tmp_path,
               "--param", "bt.iterations=60000", env={"BENCH_PROGRESS_EVERY": "0.2", "COLUMNS": "80"})
    assert r.returncode == 0, r.stderr
    assert "preparing: loading the data, making splits" in r.stdout
    assert "bt seed 0: iteration" in r.stdout and "bt seed 0 finished in" in r.stdout
    assert "1 cell computed, 0 served" in r.stdout  # singular


# ---------------------------------------------------------------------------- 80 columns


def _long_lines(text: str, width: int = 80) -> list[str]:
    return [ln for ln in text.splitlines() if len(ln) > width]


def test_list_run_report_fit_80_columns(tmp_path):
    env = {"COLUMNS": "80"}
    r = _bench("list", env=env)
    assert r.returncode == 0 and not _long_lines(r.stdout), _long_lines(r.stdout)
    r = _bench("run", "--methods", "bt,oracle", "--dataset", TINY_PRISM, "--repeats", "2", "--results", tmp_path,
               "--param", "bt.iterations=20", "--unseen-shots", "2,all", env=env)
    assert r.returncode == 0, r.stderr
    assert not _long_lines(r.stdout + r.stderr), _long_lines(r.stdout + r.stderr)
    r = _bench("report", "--results", tmp_path, env=env)
    assert r.returncode == 0 and not _long_lines(r.stdout), _long_lines(r.stdout)
    r = _bench("run", "--plan", "--methods", "all", "--dataset", TINY_PRISM, "--results", tmp_path, env=env)
    assert r.returncode == 0 and not _long_lines(r.stdout), _long_lines(r.stdout)


def test_console_width_follows_columns_else_80(monkeypatch):
    from bench.cli import _console

    monkeypatch.delenv("COLUMNS", raising=False)
    c = _console()
    assert c.width == 80  # pytest captures stdout: no terminal
    monkeypatch.setenv("COLUMNS", "120")
    assert _console().width == 120


def test_error_in_a_log_file_is_not_hard_wrapped(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    r = subprocess.run([sys.executable, "-m", "bench", "run", "--methods", "bt", "--dataset", TINY_PRISM, "--results",
                        str(tmp_path), "--param", "no_such_parameter_anywhere_in_any_method=1"],
                       capture_output=True, text=True, env=env, cwd=ROOT, timeout=120)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error:") and lines[1].startswith("  fix:"), r.stderr


# ---------------------------------------------------------------------------- bad input, report


def test_failed_run_leaves_no_results_directory(cli, tmp_path):
    res = tmp_path / "results"
    for bad in (["--methods", "nope"], ["--dataset", "synthetic-prsm"], ["--methods", "bt", "--param", "bt.nope=1"]):
        code, _, _ = cli("run", *bad, "--results", res)
        assert code == 2
        assert not res.exists(), bad


def test_failed_run_keeps_an_existing_results_directory(cli, tmp_path):
    (tmp_path / "cells").mkdir()
    code, _, _ = cli("run", "--methods", "nope", "--results", tmp_path)
    assert code == 2 and (tmp_path / "cells").is_dir()


def test_bare_report_says_where_it_looked_and_how_to_make_results(cli, tmp_path):
    code, _, err = cli("report", "--results", tmp_path / "nothing")
    text = " ".join(err.split())
    assert code == 2 and str(tmp_path / "nothing") in text and "bench run" in text


def test_report_filter_names_what_is_stored(cli, tmp_path):
    code, _, err = cli("run", "--methods", "oracle", "--dataset", TINY_PRISM, "--repeats", "1", "--results", tmp_path)
    assert code == 0, err
    code, _, err = cli("report", "--results", tmp_path, "--methods", "bt")
    text = " ".join(err.split())
    assert code == 2 and "--methods bt" in text and "methods oracle" in text


def test_report_prints_plain_seed_numbers(cli, tmp_path):
    common = ["--dataset", TINY_PRISM, "--results", tmp_path]
    assert cli("run", "--methods", "bt,oracle", "--seeds", "0,2", *common, "--param", "bt.iterations=10")[0] == 0
    assert cli("run", "--methods", "oracle", "--seeds", "1", *common)[0] == 0
    code, out, err = cli("report", "--results", tmp_path)
    assert code == 0, err
    text = " ".join(out.split())
    assert "(seeds [1])" in text and "np.int64" not in text


def test_table_marks_best_and_second_in_plain_text_with_legend(cli, tmp_path):
    code, out, err = cli("run", "--methods", "bt,oracle,lore", "--dataset", TINY_PRISM, "--repeats", "2", "--results", tmp_path,
                         "--param", "bt.iterations=20", "--param", "lore.iterations=20", "--param", "lore.adapt_iterations=5")
    assert code == 0, err
    assert "mean ± std over 2 splits" in out
    assert " * " in out or " *│" in out.replace(" ", " ")
    assert "+" in out and "* best, + second best" in out
    header = [ln for ln in out.splitlines() if "Seen" in ln]
    assert len(header) == 1 and header[0].count(TINY_PRISM.split(":")[0]) == 0  # the dataset is the title, once


def test_one_split_says_so(cli, tmp_path):
    code, out, _ = cli("run", "--methods", "oracle", "--dataset", TINY_PRISM, "--repeats", "1", "--results", tmp_path)
    assert code == 0 and "1 split" in out and "± std" not in out


# ---------------------------------------------------------------------------- SIGTERM


def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "bench", "run", "--methods", "bt", "--dataset", TINY_PRISM, "--repeats", "30",
           "--results", str(tmp_path), "--param", "bt.iterations=3000"]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    deadline = time.time() + 180
    while time.time() < deadline and len(list((tmp_path / "cells").glob("*.parquet"))) < 1:
        time.sleep(0.05)
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == 143, out + err
    n = len(list((tmp_path / "cells").glob("*.parquet")))
    assert 1 <= n < 30
    assert f"terminated (SIGTERM): {n} cell{'s' if n != 1 else ''} finished and stored" in out
    assert "Traceback" not in err
    assert not list((tmp_path / "claims").glob("*")), "a claim file was left behind"


def test_csv_errors_name_the_file_line(tmp_path):
    from bench.datasets import local

    path = tmp_path / "pairs.csv"
    path.write_text('user,chosen,rejected\nu0,0,1\nu1,2,3\n\nu2,4,5\n"u\n3",6,7\nu4,8,9\n')
    local._SOURCES[path.name] = path
    # data row 4 (from 0) is u4: the header, a blank line and a quoted line break put it on line 8
    assert local._rows([4], "pairs.csv") == "rows [4] (1 in all) (file line 8)"
    assert local._rows([0, 2], "pairs.csv").endswith("(file lines 2, 5)")
    jl = tmp_path / "pairs.jsonl"
    jl.write_text('{"user": "a"}\n\n{"user": "b"}\n')
    local._SOURCES[jl.name] = jl
    assert local._rows([1], "pairs.jsonl").endswith("(file line 3)")

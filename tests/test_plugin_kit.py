"""What a plugin author meets: the README's example, local files, a normal install, the shipped contract."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import TINY_PRISM

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "usermean"
LOCAL = f"{EXAMPLE / 'usermean' / 'method.py'}:UserMean"


def _readme_blocks(lang: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    return re.findall(rf"```{lang}\n(.*?)```", text, flags=re.S)


def test_the_readme_shows_the_example_files_verbatim():
    """The README's plugin code is the tested example, not a copy that can rot."""
    py = _readme_blocks("python")
    assert (EXAMPLE / "usermean" / "method.py").read_text() in py
    toml = _readme_blocks("toml")
    assert (EXAMPLE / "pyproject.toml").read_text() in toml
    yml = _readme_blocks("yaml")
    assert (EXAMPLE / "usermean" / "method.yaml").read_text() in yml


def test_a_local_file_runs_as_a_method(cli, tmp_path):
    code, out, err = cli("run", "--methods", f"bt,{LOCAL}", "--dataset", TINY_PRISM, "--seeds", "0",
                         "--results", tmp_path, "--no-table")
    assert code == 0, out + err
    from bench import results

    df = results.load(tmp_path)
    assert set(df["method"]) == {"bt", "usermean"}
    assert df.loc[df["method"] == "usermean", "param.prior"].eq(5.0).all()  # from method.yaml's default
    code, out, _ = cli("card", LOCAL)
    assert code == 0 and "## Parameters" in out


def test_a_local_file_runs_in_worker_processes(cli, tmp_path):
    code, out, err = cli("run", "--methods", LOCAL, "--dataset", TINY_PRISM, "--seeds", "0,1",
                         "--results", tmp_path, "--no-table", "--jobs", "2")
    assert code == 0, out + err
    assert len(list((tmp_path / "cells").glob("*.parquet"))) == 2


def test_plugin_settings_file_beside_the_module():
    from bench.config import resolve_params
    from bench.registry import load_method

    cls = load_method(LOCAL)
    assert resolve_params(cls, "prism", {})["prior"] == 5.0
    assert resolve_params(cls, "reddit", {})["prior"] == 20.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("./no_such_method.py:X", "method file ./no_such_method.py does not exist"),
        ("tests/plugins/fake_methods.py:Nope", "fake_methods.py has no class Nope"),
        ("tests/plugins/fake_methods.py", "defines 5 Method subclasses"),
        ("tests/plugins/two_methods.py:Second", "is named 'bt', like an installed method"),
        ("tests/plugins/contract_bad.py:Nameless", "has no name"),
        ("tests/plugins/exits_on_import.py", "failed to import"),
    ],
)
def test_bad_local_files_are_one_clear_error(cli, spec, message, monkeypatch):
    monkeypatch.chdir(ROOT)
    code, out, err = cli("run", "--methods", spec, "--dataset", TINY_PRISM, "--seeds", "0", "--results", "/nonexistent/x")
    assert code == 2, out + err
    assert message in out + err


def test_omitted_kind_is_other_not_reference():
    from bench.api import Method
    from bench.registry import load_method

    class NoKind(Method):
        name = "nokind"

    assert NoKind.kind == "other"
    assert load_method(LOCAL).kind == "personalized parameter"
    from reports.figures import KIND_MARKER

    assert "other" in KIND_MARKER


def _run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin and bench itself installed from wheels (not editable) into one folder."""
    import shutil

    root = tmp_path_factory.mktemp("installed")
    wheels, target = root / "wheels", root / "site"
    src_root = root / "src"  # build from copies: setuptools writes build/ and *.egg-info beside the sources
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build")
    for part in ("bench", "methods", "reports", "configs"):
        shutil.copytree(ROOT / part, src_root / "bench-prm" / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / part, src_root / "bench-prm" / part)
    shutil.copytree(EXAMPLE, src_root / "usermean", ignore=ignore)
    for src in (src_root / "bench-prm", src_root / "usermean"):
        p = _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(src)])
        assert p.returncode == 0, p.stderr[-3000:]
    p = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), *map(str, wheels.glob("*.whl"))])
    assert p.returncode == 0, p.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(target)}
    work = root / "work"  # not the clone: nothing of the repo is importable from here
    work.mkdir()
    return env, work, target


def test_normal_install_ships_cards_and_settings(installed):
    env, work, target = installed
    where = _run([sys.executable, "-c", "import bench, usermean; print(bench.__file__); print(usermean.__file__)"], env=env, cwd=work)
    assert where.stdout.count(str(target)) == 2, where.stdout + where.stderr  # the installed copies, not the clone
    for name in ("mrm", "usermean", "synthesizeme"):
        p = _run([sys.executable, "-m", "bench", "card", name], env=env, cwd=work)
        assert p.returncode == 0 and "## Parameters" in p.stdout, p.stdout + p.stderr
    p = _run([sys.executable, "-m", "bench", "list", "--json"], env=env, cwd=work)
    assert p.returncode == 0, p.stderr
    assert '"kind": "personalized parameter"' in p.stdout.split('"usermean"', 1)[1][:300]


@pytest.mark.slow
def test_the_shipped_contract_passes_on_the_installed_example(installed):
    env, work, _ = installed
    p = _run([sys.executable, "-m", "bench.testing", "usermean"], env=env, cwd=work)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "usermean: 8 passed, 0 failed, 0 skipped" in p.stdout
    assert "PASS  determinism" in p.stdout


@pytest.mark.slow
def test_the_shipped_contract_fails_a_broken_method():
    p = _run([sys.executable, "-m", "bench.testing", str(ROOT / "tests/plugins/contract_bad.py:Clock"),
              "--only", "card,param_count,determinism"], cwd=ROOT / "tests")
    assert p.returncode == 1, p.stdout + p.stderr
    assert re.search(r"FAIL  card .*has no card", p.stdout)
    assert re.search(r"SKIP  param_count .*trained_param_count\(\) returns None", p.stdout)
    assert re.search(r"FAIL  determinism .*two identical runs differ", p.stdout)
    assert "clock: 0 passed, 2 failed, 1 skipped" in p.stdout


def test_the_shipped_contract_refuses_an_unknown_method():
    p = _run([sys.executable, "-m", "bench.testing", "usermaen"], cwd=ROOT / "tests")
    assert p.returncode == 2 and "unknown method 'usermaen'" in p.stderr

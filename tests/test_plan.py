"""`bench run --plan`: cells and time estimates before anything runs; --methods all,-NAME; the long-run note."""

from __future__ import annotations

import pytest

from bench import plan as planning
from bench.errors import BenchError
from bench.methodspec import expand
from bench.runner import RunConfig
from tests.conftest import TINY_PRISM

NAMES = ["bt", "gpo", "lore", "mrm", "oracle", "pal", "vpl"]


def test_plan_prints_cells_estimates_and_total_and_writes_nothing(cli, tmp_path):
    res = tmp_path / "res"
    code, out, err = cli("run", "--plan", "--methods", "bt,oracle", "--dataset", TINY_PRISM, "--repeats", "3", "--results", res)
    assert code == 0, err
    assert "plan for" in out and "6 cells — 0 cached, 6 to run" in out
    lines = {ln.split()[0]: ln for ln in out.splitlines() if ln.split()}
    assert lines["bt"].split()[1:3] == ["3", "3"]  # 3 fit groups, 3 cells to run
    assert "oracle" in lines and "total:" in out and "estimate from" in out
    assert not res.exists()  # a plan writes nothing: no results, no split files


def test_dry_run_is_an_alias(cli, tmp_path):
    code, out, _ = cli("run", "--dry-run", "--methods", "oracle", "--dataset", TINY_PRISM, "--repeats", "1", "--results", tmp_path / "r")
    assert code == 0 and "1 cell — 0 cached, 1 to run" in out and not (tmp_path / "r").exists()


def test_estimate_scales_with_the_loop_length(tmp_path):
    from bench.datasets import load_dataset

    ds = load_dataset(TINY_PRISM)

    def seconds(iters):
        cfg = RunConfig(methods=["bt"], dataset=TINY_PRISM, seeds=[0], results=tmp_path, params={"bt": {"iterations": iters}})
        rp = planning.make_plan(cfg, ds)
        g = rp.groups[0]
        assert g.work > 0
        return g.work, g.seconds

    w1, s1 = seconds(100)
    w2, s2 = seconds(400)
    assert w2 > 3.5 * w1  # 4× the iterations over the same pairs
    if s1 is not None:  # built-in constants present
        assert s2 > s1


def test_work_model_grows_with_users_pairs_dim_and_epochs():
    base = planning.work("pal", {"epochs": 10, "adapt_epochs": 5}, n_fit=1000, n_support=200, n_test=500, dim=64)
    assert planning.work("pal", {"epochs": 20, "adapt_epochs": 5}, 1000, 200, 500, 64) > base
    assert planning.work("pal", {"epochs": 10, "adapt_epochs": 5}, 2000, 200, 500, 64) > base
    assert planning.work("pal", {"epochs": 10, "adapt_epochs": 5}, 1000, 200, 500, 128) == pytest.approx(2 * base)
    # a GPO step draws a fixed batch of users: its work does not grow with the train pairs
    g = planning.work("gpo", {"steps": 100, "batch_users": 32}, 1000, 0, 0, 64)
    assert planning.work("gpo", {"steps": 100, "batch_users": 32}, 5000, 0, 0, 64) == g
    assert planning.work("gpo", {"steps": 200, "batch_users": 32}, 1000, 0, 0, 64) == 2 * g


def test_stored_timings_calibrate_the_estimate(cli, tmp_path):
    res = tmp_path / "res"
    args = ["--methods", "bt", "--dataset", TINY_PRISM, "--repeats", "2", "--results", res, "--param", "bt.iterations=30"]
    code, _, err = cli("run", *args)
    assert code == 0, err
    code, out, _ = cli("run", "--plan", *args[:-2], "--param", "bt.iterations=60", "--seeds", "2-3")
    assert code == 0
    bt = next(ln for ln in out.splitlines() if ln.startswith("bt "))
    assert "2 stored" in bt  # the two finished fit groups of this dataset set the estimate
    assert "fitted to the timings of N finished fit groups" in out


def test_long_run_note_names_the_cuts(cli, tmp_path, monkeypatch):
    monkeypatch.setattr(planning, "WARN_AFTER_S", -1.0)  # every run is "long"
    monkeypatch.setattr(planning, "builtin_costs", lambda: {"bt": {"a": 1.0, "b": 1e-6}, "oracle": {"a": 0.1, "b": 0.0}})
    code, out, err = cli("run", "--methods", "bt,oracle", "--dataset", TINY_PRISM, "--repeats", "4", "--results", tmp_path,
                         "--param", "bt.iterations=10")
    assert code == 0, err
    note = next(ln for ln in " ".join(out.split()).split("note: ") if ln.startswith("this run is estimated"))
    assert "--repeats 1" in note and "--methods all,-" in note and "--plan" in note


def test_short_run_has_no_note(tmp_path):
    rp = planning.RunPlan("d", "d", methods=[planning.MethodPlan("bt", groups=1, cells=1, seconds=10.0, source="built-in")])
    assert planning.warning(rp) is None
    assert "0:50:00" in planning.warning(planning.RunPlan("d", "d", methods=[
        planning.MethodPlan("bt", groups=5, cells=5, seconds=3000.0, source="built-in")]))


# ---------------------------------------------------------------------------- --methods


def test_all_minus_excludes():
    assert expand("all,-gpo", NAMES) == [n for n in NAMES if n != "gpo"]
    assert expand("all,-gpo,-VPL", NAMES) == ["bt", "lore", "mrm", "oracle", "pal"]


def test_names_are_case_insensitive():
    assert expand("BT,Oracle", NAMES) == ["bt", "oracle"]


def test_uppercase_unknown_suggests_lowercase():
    with pytest.raises(BenchError) as e:
        expand("BTT", NAMES)
    assert "Did you mean 'bt'?" in e.value.message


def test_every_bad_name_is_reported_with_a_suggestion():
    with pytest.raises(BenchError) as e:
        expand("bt,mrn,lorre", NAMES)
    msg = e.value.message
    assert "'mrn' (did you mean 'mrm'?)" in msg and "'lorre' (did you mean 'lore'?)" in msg


def test_exclusion_needs_all():
    with pytest.raises(BenchError) as e:
        expand("bt,-gpo", NAMES)
    assert "all,-gpo" in e.value.hint


def test_cli_all_minus_runs_the_rest(cli, tmp_path):
    code, out, err = cli("run", "--plan", "--methods", "all,-gpo,-vpl,-pal,-pal-b,-mrm", "--dataset", TINY_PRISM,
                         "--repeats", "1", "--results", tmp_path / "r")
    assert code == 0, err
    rows = [ln.split()[0] for ln in out.splitlines() if ln.split()]
    assert "bt" in rows and "gpo" not in rows and "vpl" not in rows and "mrm" not in rows

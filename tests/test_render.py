"""What the rendered tables and figures look like: signs, captions, legends, axes, page width.

Fast unit tests on hand-made numbers (no training); the LaTeX test compiles with pdflatex where it
is installed and is skipped otherwise.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.reports import figures
from bench.reports import paper_tables as pt
from bench.reports import selection_bias
from bench.reports.latex import fit_width, minus

# a hyphen used as a sign in LaTeX output: "-14.9" not preceded by a letter, digit, "$" or "-"
HYPHEN_SIGN = re.compile(r"(?<![\w$\\-])-\d")


# ---------------------------------------------------------------------------- minus signs


def test_minus_turns_a_sign_into_a_math_minus_and_leaves_words_alone():
    assert minus("-14.9\\%") == "$-$14.9\\%"
    assert minus("+0.38 [-7.98, +8.74]") == "+0.38 [$-$7.98, +8.74]"
    assert minus("-.5") == "$-$.5"
    for unchanged in ("mrm-no-rpo", "--", "$-$1.0", "Reddit (1-2)", "12.5 $\\pm$ 1.0", "seeds 0-19"):
        assert minus(unchanged) == unchanged


class FakePlan:
    def __init__(self, outputs: dict, roles: dict | None = None, labels: dict | None = None):
        self.config = {"alpha": 0.05, "n_unit": "users", "outputs": outputs}
        self.roles = roles if roles is not None else {"prism": ["synthetic-prism"]}
        self.labels = labels or {}

    def method_label(self, m: str) -> str:
        return self.labels.get(m, m)


def _grid(name: str, rows: list[tuple[str, str]], mean: np.ndarray, n: np.ndarray, S: int = 3,
          columns: list[pt.Column] | None = None) -> pt.Grid:
    R, C = mean.shape
    columns = columns or [pt.Column("PRISM", lab, "prism", pop) for pop, lab in
                          (("seen", "Seen"), ("unseen", "Unseen"), ("overall", "Overall"))][:C]
    keys = np.empty((R, C), dtype=object)
    keys[:] = [[[] for _ in range(C)] for _ in range(R)]
    return pt.Grid(name, [r for r, _ in rows], [m for _, m in rows], columns, mean, np.full((R, C), 0.01),
                   n, np.full((R, C), S), keys, [True] * R)


def test_table_improvement_row_prints_a_math_minus():
    mean = np.array([[0.60, 0.60, 0.60], [0.52, 0.51, 0.50]])
    g = _grid("table1", [("BT", "bt"), ("MRM", "mrm")], mean, np.full((2, 3), 3))
    g.extra_rows.append(("% Improvement", pt.improvement_row(g, "mrm")))
    assert g.extra_rows[0][1][0].startswith("-")  # the row itself is negative here
    tex = pt.to_latex(g, "cap", "tab:t")
    imp = next(line for line in tex.splitlines() if line.startswith("\\% Improvement"))
    assert "$-$13.3\\%" in imp
    body = "\n".join(line for line in tex.splitlines() if "&" in line)
    assert not HYPHEN_SIGN.search(body), body


def test_negative_cell_means_print_a_math_minus():
    # a table of differences (or a shifted metric) may hold negative means: the cell text too
    mean = np.array([[-0.031, 0.02, 0.01]])
    g = _grid("t", [("Δ", "d")], mean, np.full((1, 3), 3))
    tex = pt.to_latex(g, "cap", "tab:t")
    assert "$-$3.1 $\\pm$ 1.0" in tex and not HYPHEN_SIGN.search(tex.split("\\midrule", 1)[1])


def test_bench_table_latex_prints_a_math_minus():
    from bench.reports import tables

    cols = pd.MultiIndex.from_product([["prism"], list(tables.POPS)])
    mean = pd.DataFrame([[-0.05, 0.6, 0.6]], index=["d"], columns=cols)
    t = tables.Table(["d"], ["prism"], mean, mean * 0 + 0.01, mean * 0 + 3, {"prism": 3})
    tex = tables.to_latex(t)
    assert "$-$5.0 $\\pm$ 1.0" in tex and not HYPHEN_SIGN.search(tex.split("\\midrule", 1)[1])


# ---------------------------------------------------------------------------- captions


def _t2_columns():
    return [pt.Column("Seen", "Overall", "prism", "seen"), pt.Column("Seen", "Worst 10\\%", "prism", "seen_worst10")]


def test_table2_caption_names_the_incomplete_reference_instead_of_zero_comparisons():
    rows = [("MRM", "mrm"), ("(1) w/o meta", "mrm-no-meta")]
    g = _grid("table2", rows, np.full((2, 2), 0.5), np.array([[2, 2], [3, 3]]), columns=_t2_columns())
    plan = FakePlan({"table2": {"reference": "mrm"}}, labels={"mrm": "MRM"})
    pt.mark_against_reference(None, g, 0, 0.05, "users")  # the reference is incomplete: nothing to compare
    assert g.tests == []
    cap = pt.caption_table2(g, plan)
    assert "0 comparisons" not in cap
    assert "no comparison made: the reference row MRM has only 2 of its 3 planned splits" in cap


def test_table2_caption_without_the_reference_row_says_so():
    g = _grid("table2", [("(1) w/o meta", "mrm-no-meta")], np.full((1, 2), 0.5), np.full((1, 2), 3),
              columns=_t2_columns())
    cap = pt.caption_table2(g, FakePlan({"table2": {"reference": "mrm"}}, labels={"mrm": "MRM"}))
    assert "0 comparisons" not in cap and "the reference row MRM has no results" in cap


def test_a_dash_cell_is_explained_in_the_caption():
    n = np.array([[3, 3, 3], [0, 0, 0]])
    g = _grid("table1", [("BT", "bt"), ("MRM", "mrm")], np.where(n > 0, 0.6, np.nan), n)
    plan = FakePlan({"table1": {}})
    cap = pt.caption_table1(g, plan, "table1", [])
    assert "--: no split of this row is stored" in cap
    full = _grid("table1", [("BT", "bt")], np.full((1, 3), 0.6), np.full((1, 3), 3))
    assert "--: no split" not in pt.caption_table1(full, plan, "table1", [])
    assert "--: no split of this row is stored" in pt.caption_table2(
        _grid("table2", [("MRM", "mrm")], np.full((1, 2), np.nan), np.zeros((1, 2), dtype=int), columns=_t2_columns()),
        FakePlan({"table2": {"reference": "mrm"}}))


def test_table1_caption_names_the_papers_rows_it_leaves_out():
    g = _grid("table1", [("RM", "rm"), ("MRM", "mrm")], np.full((2, 3), 0.6), np.full((2, 3), 3))
    cap = pt.caption_table1(g, FakePlan({"table1": {}}), "table1", [])
    assert "Rows of the paper's Table 1 (Cai et al., SIGIR 2026) left out here" in cap
    assert "SynthesizeMe (ICL) and (FT)" in cap and "embeddings" in cap
    assert "Skywork-Reward V1 and V2" in cap
    # with one spec per feature model the V1/V2 rows exist; with SynthesizeMe rows it is not left out
    two = FakePlan({"table1": {}}, roles={"prism": ["prism:v1", "prism:v2"]})
    g2 = _grid("table1", [("RM", "rm"), ("SynthesizeMe", "synthesizeme")], np.full((2, 3), 0.6), np.full((2, 3), 3))
    assert "left out" not in pt.caption_table1(g2, two, "table1", [])


# ---------------------------------------------------------------------------- selection-bias table


def _sb_table(lo=-0.0798, hi=0.0874) -> pd.DataFrame:
    recs = []
    for m in ("Seen", "Unseen", "Overall", "Worst 10%"):
        recs.append({"metric": m, "honest_mean": 0.545, "honest_std": 0.012, "official_mean": 0.548, "official_std": 0.007,
                     "optimism_mean": 0.0038, "optimism_ci_low": lo, "optimism_ci_high": hi, "p": 0.667,
                     "n_splits": 2})
    return pd.DataFrame.from_records(recs)


def test_selection_bias_table_prints_math_minus_and_explains_its_columns():
    tex = selection_bias.table_latex(_sb_table(), "\\textbf{Analysis, not a protocol result.} x", "")
    assert "[$-$7.98, +8.74]" in tex and not HYPHEN_SIGN.search(tex)
    assert "Columns: Honest, the final epoch; Official, the best test epoch; Optimism, official $-$ honest" in tex
    assert "$p$ ($t$), one-sample $t$-test over splits" in tex and "Wilcoxon" not in tex
    assert "\\ifdim\\width>\\linewidth" in tex  # scaled down only where wider than the line


def test_fit_width_wraps_the_tabular_once():
    out = fit_width("\\begin{table}\n\\begin{tabular}{lr}\na & b \\\\\n\\end{tabular}\n\\end{table}")
    assert out.count("\\resizebox") == 1 and out.count("\\end{tabular}}") == 1


def _pdflatex(tmp_path: Path, body: str, preamble: str = "") -> str:
    doc = "\n".join([r"\documentclass{article}", r"\usepackage{booktabs,graphicx}", r"\usepackage[T1]{fontenc}",
                     r"\usepackage[utf8]{inputenc}", preamble, r"\begin{document}", body, r"\end{document}"])
    (tmp_path / "main.tex").write_text(doc)
    r = subprocess.run(["pdflatex", "-interaction=nonstopmode", "-halt-on-error", "main.tex"], cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout[-3000:]
    return (tmp_path / "main.log").read_text(errors="replace")


@pytest.mark.skipif(shutil.which("pdflatex") is None, reason="pdflatex is not installed")
@pytest.mark.parametrize("width", ["", r"\usepackage[textwidth=241pt]{geometry}"])  # article; a two-column page's column
def test_selection_bias_table_fits_the_page(tmp_path, width):
    tex = selection_bias.table_latex(_sb_table(-0.123456, 0.987654), "\\textbf{Analysis, not a protocol result.} x", "")
    (tmp_path / "sb.tex").write_text(tex)
    log = _pdflatex(tmp_path, r"\input{sb.tex}", width)
    assert "Overfull \\hbox" not in log, log[log.find("Overfull"):][:400]


# ---------------------------------------------------------------------------- figures


@pytest.fixture
def captured(monkeypatch, tmp_path):
    """The matplotlib figure each plot function builds (it is still inspectable after saving)."""
    figs = []
    real = figures.save

    def save(fig, stem, data):
        figs.append(fig)
        return real(fig, tmp_path / Path(stem).name, data)

    monkeypatch.setattr(figures, "save", save)
    return figs


def _summ(mean, std=0.02, n=3, expected=3):
    return {"mean": mean, "std": std, "ci_low": mean - 0.05, "ci_high": mean + 0.05, "n_splits": n, "expected": expected,
            "complete": n == expected}


def _bars_start_at_zero(fig) -> None:
    from matplotlib.container import BarContainer

    for ax in fig.axes:
        if any(isinstance(c, BarContainer) for c in ax.containers):
            assert ax.get_ylim()[0] == 0, (ax.get_title(), ax.get_ylim())


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for lg in fig.legends for t in lg.get_texts()]


def _legend_titles(fig) -> str:
    return " ".join(lg.get_title().get_text() for lg in fig.legends)


def test_fig4_overall_panel_has_no_bars_on_a_cut_axis_and_names_the_fixed_meta_batch(tmp_path, captured):
    recs = [{"panel": 0, "param": "rho", "value": v, "metric": m, **_summ(base + 0.002 * i)}
            for i, v in enumerate([0.1, 0.2, 0.5])
            for m, base in (("overall", 0.50), ("overall_worst10", 0.10), ("overall_worst20", 0.19), ("overall_worst50", 0.31))]
    figures.plot_rho(pd.DataFrame.from_records(recs), tmp_path / "fig4", fixed=figures.fixed_text({"meta_batch": 8}))
    fig = captured[0]
    _bars_start_at_zero(fig)
    a, b = fig.axes[:2]
    assert a.get_ylim()[0] > 40  # zoomed: so it draws points, not bars
    assert not a.containers or all(type(c).__name__ != "BarContainer" for c in a.containers)
    assert "meta batch 8" in fig.get_suptitle()
    assert "Whiskers: ±1 s.d. over the 3 splits" in _legend_titles(fig)


def test_fig5_panel_title_names_its_fixed_meta_batch(tmp_path, captured):
    recs = [{"panel": p, "param": par, "value": v, "metric": m, **_summ(0.5 if m == "overall" else 0.1)}
            for p, par, vals in ((0, "meta_batch", [2, 4, 8]), (1, "gamma", [0.0, 0.5])) for v in vals
            for m in ("overall", "overall_worst10")]
    panels = [{"sweep": {"meta_batch": [2, 4, 8]}, "xlabel": "Meta batch size"},
              {"sweep": {"gamma": [0.0, 0.5]}, "params": {"meta_batch": 8}, "xlabel": "Smoothing γ"}]
    figures.plot_two_metric_sweeps(pd.DataFrame.from_records(recs), tmp_path / "fig5", panels)
    fig = captured[0]
    titles = [ax.get_title() for ax in fig.axes if ax.get_title()]
    assert "(b) Smoothing γ, meta batch 8" in titles and "(a) Meta batch size" in titles
    assert "Whiskers" in _legend_titles(fig)


def test_fig3_labels_the_chance_line_and_says_what_the_whiskers_are(tmp_path, captured):
    recs = [{"setting": s, "variant": v, "method": v.lower(), "kind": "reference", "k": k,
             **_summ(0.1 * k / 10, n=2 if (v == "MRM" and s == "Reddit") else 3)}
            for s in ("PRISM", "Reddit") for v in ("BT", "MRM") for k in (10, 20, 50)]
    figures.plot_worst_k(pd.DataFrame.from_records(recs), tmp_path / "fig3")
    fig = captured[0]
    texts = _legend_texts(fig)
    assert "chance (50%)" in texts
    assert "MRM (panel b: 2/3 splits)" in texts and "MRM" in texts
    assert "Whiskers: ±1 s.d." in _legend_titles(fig)


def test_fig6_draws_a_line_missing_splits_distinctly_and_names_its_panel(tmp_path, captured):
    recs = []
    for s in ("PRISM", "Reddit"):
        for v in ("BT", "MRM"):
            for u in ("1", "2", "all"):
                n = 2 if (v == "MRM" and s == "Reddit") else 3
                recs.append({"setting": s, "variant": v, "method": v.lower(), "kind": "reference", "unseen_shots": u,
                             **_summ(0.55, n=n)})
    data = pd.DataFrame.from_records(recs)
    data.loc[0, ["ci_low", "ci_high"]] = [-0.075, 1.088]  # a df = 1 band past the possible range
    figures.plot_few_shot(data, tmp_path / "fig6")
    fig = captured[0]
    assert "MRM (panel b: 2/3 splits)" in _legend_texts(fig)
    assert "Whiskers: 95% interval" in _legend_titles(fig)
    b = fig.axes[1]
    lines = {ln.get_label(): ln for ln in b.get_lines()}
    partial = lines["MRM (panel b: 2/3 splits)"]
    assert partial.get_linestyle() == "--" and partial.get_markerfacecolor() == "white"
    assert lines["BT"].get_linestyle() == "-"
    lo, hi = fig.axes[0].get_ylim()
    assert lo >= -6 and hi <= 106  # the interval is clipped to what an accuracy can be


def test_fig7_legend_is_outside_the_axes_and_the_csv_has_the_feature_dimension(tmp_path, captured):
    formulas = {m: {"method": m.lower(), "shared": sh, "per_user": pu, "dim": 32, "checked": "yes"}
                for m, sh, pu in (("BT", 32, 0), ("GPO", 18306, 0), ("VPL", 7600, 0), ("PAL", 1100, 2),
                                  ("LoRe", 96, 3), ("MRM", 64, 2))}
    data = figures.params_data(formulas, [10, 100, 1000, 10000])
    assert (data["dim"] == 32).all()
    figures.plot_params(data, tmp_path / "fig7")
    fig = captured[0]
    ax = fig.axes[0]
    assert ax.get_legend() is None and fig.legends
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig).draw()  # saving closed it: attach a canvas again to measure
    r = fig.canvas.get_renderer()
    leg, box = fig.legends[0].get_window_extent(r), ax.get_window_extent(r)
    assert leg.y1 <= box.y0 + 1  # below the axes: covers no line
    assert "D = 32" in ax.get_title()
    assert pd.read_csv(tmp_path / "fig7.csv")["dim"].notna().all()


def test_selection_bias_figure_says_what_its_band_is(tmp_path, captured):
    curve = pd.DataFrame.from_records([{"epoch": e, **_summ(0.53)} for e in (1, 2, 3, 4)])
    picks = pd.DataFrame({"selected_epoch": [1, 4], "official": [0.55, 0.53], "final_epoch": [4, 4], "honest": [0.54, 0.52]})
    figures.plot_selection_bias(curve, picks, tmp_path / "sb", curve)
    assert "Band: 95% t-interval over splits" in _legend_titles(captured[0])

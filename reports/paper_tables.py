"""The paper's tables with significance marks: Table 1 (methods × settings × Seen/Unseen/Overall)
and Table 2 (MRM ablations × Overall/worst-k%, seen and unseen).

Rules that keep a table honest:

* Ranks (bold best, underlined second) use unrounded means and only rows that are *complete* in
  that column — every planned split present. A row with missing splits shows the mean of what it
  has followed by ``(k/S)`` and is never ranked, tested or used for the improvement row.
* Significance: the crossed users × splits t-test on the paired per-user differences (two-sided;
  bench.comparison, docs/paper.md § Statistics), Holm-adjusted over the family of every comparison
  shown in the table; the caption names the family, the test, S and α. Each comparison's interval,
  variance shares and the paper's corrected resampled t (seen/unseen) go to the table's
  ``*-tests.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.comparison import compare, metric_label
from bench.metrics import mean_std
from bench.reports.latex import minus
from bench.stats import holm

SPLIT_COLUMNS = ("seen", "unseen", "overall")


@dataclass
class Column:
    group: str  # top header (a setting, or "Seen"/"Unseen")
    label: str  # second header
    setting: str  # setting id
    metric: str  # split-level metric key


@dataclass
class Grid:
    """Numbers behind a table: rows × columns of split-level summaries, plus marks."""

    name: str
    rows: list[str]
    methods: list[str]  # method of each row
    columns: list[Column]
    mean: np.ndarray
    std: np.ndarray
    n: np.ndarray  # splits present
    expected: np.ndarray  # splits planned
    keys: np.ndarray  # object array of key lists (done cells) per (row, column)
    rankable: list[bool]
    markers: np.ndarray = None  # object (R × C) of marker strings
    extra_rows: list[tuple[str, list[str]]] = field(default_factory=list)
    tests: list[dict] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    blocks: list[tuple[int, str]] = field(default_factory=list)  # (first row, title): Table 1's official / tuned blocks

    def __post_init__(self):
        if self.markers is None:
            self.markers = np.full(self.mean.shape, "", dtype=object)

    def complete(self, i: int, j: int) -> bool:
        return bool(self.n[i, j] > 0 and self.n[i, j] == self.expected[i, j])

    def ranks(self, j: int) -> dict[int, int]:
        """Row index → 1 (best) or 2 (second), among complete, rankable rows, on unrounded means.

        Exact ties share a rank (two bold cells rather than an arbitrary winner)."""
        cands = [i for i in range(len(self.rows)) if self.rankable[i] and self.complete(i, j) and np.isfinite(self.mean[i, j])]
        levels = sorted({float(self.mean[i, j]) for i in cands}, reverse=True)
        out = {}
        for i in cands:
            m = float(self.mean[i, j])
            if np.isclose(m, levels[0], rtol=1e-12, atol=0):
                out[i] = 1
            elif len(levels) > 1 and np.isclose(m, levels[1], rtol=1e-12, atol=0):
                out[i] = 2
        return out

    def cell_text(self, i: int, j: int, scale: float = 100.0, digits: int = 1, pm: str = "±") -> str:
        if self.n[i, j] == 0:
            return "–"
        m = self.mean[i, j] * scale
        s = self.std[i, j] * scale
        txt = f"{m:.{digits}f} {pm} {s:.{digits}f}" if np.isfinite(s) else f"{m:.{digits}f}"
        if not self.complete(i, j):
            txt += f" ({int(self.n[i, j])}/{int(self.expected[i, j])})"
        return txt

    def incomplete_rows(self) -> list[str]:
        return [r for i, r in enumerate(self.rows) if any(not self.complete(i, j) for j in range(len(self.columns)))]


def build_grid(name: str, slots: pd.DataFrame, rows: list[tuple[str, str]], columns: list[Column],
               unranked: set[str] = frozenset()) -> Grid:
    """``rows`` = (label, method) in display order; ``slots`` from ResultSet.slots (one output)."""
    R, C = len(rows), len(columns)
    mean = np.full((R, C), np.nan)
    std = np.full((R, C), np.nan)
    n = np.zeros((R, C), dtype=int)
    expected = np.zeros((R, C), dtype=int)
    keys = np.empty((R, C), dtype=object)
    for i, (label, _method) in enumerate(rows):
        for j, col in enumerate(columns):
            g = slots[(slots["variant"] == label) & (slots["setting"] == col.setting)]
            expected[i, j] = g["seed"].nunique()
            done = g[g["state"] == "done"]
            keys[i, j] = sorted(done["key"])
            if len(done) and col.metric in done:
                mean[i, j], std[i, j], n[i, j] = mean_std(done[col.metric].to_numpy(np.float64))
    return Grid(name, [r for r, _ in rows], [m for _, m in rows], columns, mean, std, n, expected, keys,
                [m not in unranked for _, m in rows])


def _compare_cells(rs, grid: Grid, i: int, k: int, j: int, n_unit: str):
    """The paired comparison of rows i and k in column j, or None (with a note) if they are not paired."""
    from bench.errors import BenchError

    col = grid.columns[j]
    ra = rs.user_rows(grid.keys[i, j])
    rb = rs.user_rows(grid.keys[k, j])
    try:
        return compare(ra, rb, grid.rows[i], grid.rows[k], metric=col.metric, n_unit=n_unit)
    except BenchError as e:
        note = f"{col.group} · {col.label}: {grid.rows[i]} vs {grid.rows[k]} not tested — {e.message}"
        if note not in grid.notes:
            grid.notes.append(note)
        return None


def mark_best_vs_rest(rs, grid: Grid, alpha: float, n_unit: str) -> None:
    """Table 1: the best row of each column against every other complete rankable row; Holm over all."""
    pending = []
    for j, col in enumerate(grid.columns):
        ranks = grid.ranks(j)
        best = next((i for i, r in ranks.items() if r == 1), None)
        if best is None:
            continue
        for k in range(len(grid.rows)):
            if k == best or not grid.rankable[k] or not grid.complete(k, j):
                continue
            c = _compare_cells(rs, grid, best, k, j, n_unit)
            if c is None:
                grid.markers[best, j] += "?"  # its significance cannot be established: say so, never star it
                continue
            pending.append((j, best, k, c))
    _apply_holm(grid, pending, alpha)
    for j in range(len(grid.columns)):
        tests = [t for t in grid.tests if t["column"] == j]
        if tests and all(t["significant"] for t in tests) and "?" not in "".join(grid.markers[:, j]):
            grid.markers[tests[0]["row_a"], j] += "*"


def mark_against_reference(rs, grid: Grid, reference: int, alpha: float, n_unit: str) -> None:
    """Table 2: every other row against the reference row (full MRM); Holm over all; † marks a significant difference."""
    pending = []
    for j in range(len(grid.columns)):
        if not grid.complete(reference, j):
            continue
        for k in range(len(grid.rows)):
            if k == reference or not grid.complete(k, j):
                continue
            c = _compare_cells(rs, grid, reference, k, j, n_unit)
            if c is not None:
                pending.append((j, reference, k, c))
    _apply_holm(grid, pending, alpha)
    for t in grid.tests:
        if t["significant"]:
            grid.markers[t["row_b"], t["column"]] += "†"


def _apply_holm(grid: Grid, pending, alpha: float) -> None:
    adj = holm([c.pvalue for *_, c in pending])
    for (j, i, k, c), p in zip(pending, adj):
        rec = c.record()
        rec.update(column=j, setting=grid.columns[j].setting, group=grid.columns[j].group, row_a=i, row_b=k,
                   p_holm=float(p), significant=bool(np.isfinite(p) and p < alpha))
        grid.tests.append(rec)


def improvement_row(grid: Grid, ours: str) -> list[str] | None:
    """% gain of the best `ours` row over the best other complete rankable row, per column."""
    if ours not in grid.methods:
        return None
    out = []
    for j in range(len(grid.columns)):
        mine = [i for i, m in enumerate(grid.methods) if m == ours and grid.complete(i, j)]
        others = [i for i, m in enumerate(grid.methods) if m != ours and grid.rankable[i]]
        if not mine or not others or any(not grid.complete(i, j) for i in others) or \
                any(not grid.complete(i, j) for i, m in enumerate(grid.methods) if m == ours):
            out.append("–")
            continue
        a = max(grid.mean[i, j] for i in mine)
        b = max(grid.mean[i, j] for i in others)
        out.append(f"{(a - b) / b * 100:.1f}%")
    return out


# ---------------------------------------------------------------------------- building the two tables


def table1(rs, output: str) -> Grid:
    plan = rs.plan
    cfg = plan.config["outputs"][output]
    slots = rs.slots(output)
    settings = [s for s in cfg["settings"] if s in plan.settings and plan.settings[s].role in plan.roles]
    columns = [Column(plan.settings[s].label, lab, s, pop) for s in settings
               for pop, lab in (("seen", "Seen"), ("unseen", "Unseen"), ("overall", "Overall"))]
    rows = list(dict.fromkeys(zip(slots["variant"], slots["method"])))
    order = {m: i for i, m in enumerate(cfg.get("methods", []))}
    unranked = set(cfg.get("unranked", []))
    # unranked rows (the oracle ceiling) go last; otherwise the experiment file's order; rows
    # METHOD@tuned (bench/tuning.py) form a second block after the official settings
    tuned = lambda m: m.endswith("@tuned")  # noqa: E731
    base = lambda m: m[: -len("@tuned")] if tuned(m) else m  # noqa: E731
    rows.sort(key=lambda r: (r[1] in unranked, tuned(r[1]), order.get(base(r[1]), 99)))
    grid = build_grid(output, slots, rows, columns, unranked)
    if any(tuned(m) for _, m in rows):
        first_tuned = next(i for i, (_, m) in enumerate(rows) if tuned(m))
        grid.blocks = [(0, "Official settings"), (first_tuned, "Tuned on validation (equal budget, docs/tuning.md)")]
    alpha = float(plan.config.get("alpha", 0.05))
    n_unit = str(plan.config.get("n_unit", "users"))
    mark_best_vs_rest(rs, grid, alpha, n_unit)
    ours = cfg.get("ours")
    imp = improvement_row(grid, ours) if ours else None
    if imp is not None:
        grid.extra_rows.append(("% Improvement", imp))
    return grid


def table2(rs, output: str) -> Grid:
    plan = rs.plan
    cfg = plan.config["outputs"][output]
    slots = rs.slots(output)
    settings = [s for s in cfg["settings"] if s in plan.settings and plan.settings[s].role in plan.roles]
    columns = []
    for s in settings:
        prefix = f"{plan.settings[s].label} · " if len(settings) > 1 else ""
        for pop in ("seen", "unseen"):
            for metric in (pop, f"{pop}_worst10", f"{pop}_worst20", f"{pop}_worst50"):
                label = "Overall" if metric == pop else metric_label(metric).split(" ", 1)[1].capitalize()
                columns.append(Column(prefix + pop.capitalize(), label, s, metric))
    rows = list(dict.fromkeys(zip(slots["variant"], slots["method"])))
    order = {m: i for i, m in enumerate(cfg.get("methods", []))}
    rows.sort(key=lambda r: order.get(r[1], 99))
    grid = build_grid(output, slots, rows, columns)
    ref = cfg.get("reference")
    if ref in grid.methods:
        mark_against_reference(rs, grid, grid.methods.index(ref), float(plan.config.get("alpha", 0.05)),
                               str(plan.config.get("n_unit", "users")))
    return grid


# ---------------------------------------------------------------------------- rendering


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$"),
                 ("ρ", r"$\rho$"), ("γ", r"$\gamma$"), ("–", "--"), ("·", r"$\cdot$"), ("†", r"$^\dagger$")):
        s = s.replace(a, b)
    return s


def _latex_cell(grid: Grid, i: int, j: int) -> str:
    txt = grid.cell_text(i, j, pm=r"$\pm$")
    if txt == "–":
        return "--"
    txt = minus(txt)
    marks = grid.markers[i, j]
    if marks:
        sup = marks.replace("*", "*").replace("†", r"\dagger")
        txt += f"$^{{{sup}}}$"
    return txt


def to_latex(grid: Grid, caption: str, label: str, header: str = "", row_title: str = "Method") -> str:
    """booktabs LaTeX via pandas Styler; bold best and underline second (complete rows only)."""
    cols = pd.MultiIndex.from_tuples([(_latex_escape(c.group), _latex_escape(c.label)) for c in grid.columns],
                                     names=[None, row_title])
    body = [[_latex_cell(grid, i, j) for j in range(len(grid.columns))] for i in range(len(grid.rows))]
    index = [_latex_escape(r) for r in grid.rows]
    for lab, vals in grid.extra_rows:
        body.append([minus(_latex_escape(v)) for v in vals])
        index.append(_latex_escape(lab))
    data = pd.DataFrame(body, index=pd.Index(index), columns=cols)
    styler = data.style
    for j in range(len(grid.columns)):
        for i, rk in grid.ranks(j).items():
            styler = styler.set_properties(subset=pd.IndexSlice[[data.index[i]], [data.columns[j]]],
                                           **({"textbf": "--rwrap"} if rk == 1 else {"underline": "--rwrap"}))
    latex = styler.to_latex(
        hrules=True,
        multicol_align="c",
        column_format="l" + "r" * len(grid.columns),
        caption=caption,
        label=label,
        position="t",
        position_float="centering",
        environment="table*" if len(grid.columns) > 4 else "table",
    )
    latex = latex.replace("\\begin{tabular}", "\\resizebox{\\linewidth}{!}{%\n\\begin{tabular}").replace(
        "\\end{tabular}", "\\end{tabular}}")
    lines = latex.split("\n")
    # \cmidrule under each column group of the first header row
    spans, start = [], 2
    for _group, members in _groups(grid.columns):
        spans.append(f"\\cmidrule(lr){{{start}-{start + members - 1}}}")
        start += members
    top = next(n for n, line in enumerate(lines) if line.startswith("\\toprule"))
    lines.insert(top + 2, " ".join(spans))
    # rules before the unranked rows (ceilings) and the extra rows (improvement)
    firsts = []
    unranked = [i for i, ok in enumerate(grid.rankable) if not ok]
    if unranked:
        firsts.append(index[min(unranked)])
    if grid.extra_rows:
        firsts.append(index[len(grid.rows)])
    for first in firsts:
        for n, line in enumerate(lines):
            if line.startswith(first + " &"):
                lines.insert(n, "\\midrule")
                break
    for b, (row, title) in enumerate(grid.blocks):  # a title row (after a rule) above each block
        for n, line in enumerate(lines):
            if line.startswith(index[row] + " &"):
                lines[n:n] = ([] if b == 0 else ["\\midrule"]) + [
                    f"\\multicolumn{{{len(grid.columns) + 1}}}{{l}}{{\\emph{{{_latex_escape(title)}}}}} \\\\"]
                break
    return header + "\n".join(lines)


def _groups(columns: list[Column]) -> list[tuple[str, int]]:
    out: list[tuple[str, int]] = []
    for c in columns:
        if out and out[-1][0] == c.group:
            out[-1] = (c.group, out[-1][1] + 1)
        else:
            out.append((c.group, 1))
    return out


def to_markdown(grid: Grid) -> str:
    head = ["Method"] + [f"{c.group} · {c.label}" for c in grid.columns]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    ranks = [grid.ranks(j) for j in range(len(grid.columns))]
    starts = dict(grid.blocks)
    for i, r in enumerate(grid.rows):
        if i in starts:
            out.append("| " + " | ".join([f"*{starts[i]}*"] + [""] * len(grid.columns)) + " |")
        cells = []
        for j in range(len(grid.columns)):
            t = grid.cell_text(i, j) + grid.markers[i, j]
            rk = ranks[j].get(i)
            cells.append(f"**{t}**" if rk == 1 else f"<u>{t}</u>" if rk == 2 else t)
        out.append("| " + " | ".join([r] + cells) + " |")
    for lab, vals in grid.extra_rows:
        out.append("| " + " | ".join([lab] + list(vals)) + " |")
    return "\n".join(out)


def tests_frame(grid: Grid) -> pd.DataFrame:
    if not grid.tests:
        return pd.DataFrame()
    f = pd.DataFrame.from_records(grid.tests)
    f["a"] = [grid.rows[i] for i in f["row_a"]]
    f["b"] = [grid.rows[k] for k in f["row_b"]]
    cols = ["column", "group", "setting", "metric", "a", "b", "n_splits", "n_users", "mean_a", "mean_b", "diff",
            "ci_low", "ci_high", "se", "df", "t", "p", "p_holm", "significant", "var_share_users", "var_share_splits",
            "var_share_error", "note", "p_nb", "nb_factor", "n_unit", "n_train", "n_test"]
    return f[cols]


def caption_table1(grid: Grid, plan, output: str, skipped_methods: list[str]) -> str:
    alpha = float(plan.config.get("alpha", 0.05))
    S = int(grid.expected.max()) if grid.expected.size else 0
    fam = len(grid.tests)
    cap = (
        "User-level accuracy (\\%), mean $\\pm$ std (ddof 1) over $S={S}$ splits. Bold: best; underlined: second best, "
        "ranked on unrounded means among rows complete in that column"
    ).format(S=S)
    unranked = [r for r, ok in zip(grid.rows, grid.rankable) if not ok]
    if unranked:
        cap += f" ({_latex_escape(', '.join(unranked))}: a ceiling, not ranked or tested)"
    cap += (
        ". $^{*}$: the best row of the column is significantly better than every other complete row "
        f"(crossed users $\\times$ splits $t$-test on the paired per-user differences, two-sided; "
        f"Holm over the family of all {fam} best-vs-row comparisons in this table; $\\alpha={alpha:g}$)."
    )
    if grid.extra_rows:
        ours = _latex_escape(plan.method_label(plan.config["outputs"][output].get("ours", "")))
        cap += (f" \\% Improvement: gain of the best {ours} row over the best other row, relative to the latter "
                "(only where every row is complete; -- where one is not).")
    if any("?" in m for m in grid.markers.ravel()):
        cap += " $^{?}$: a comparison of this best cell could not be made (the cells are not paired; see the index)."
    if grid.incomplete_rows():
        cap += " $(k/S)$: only $k$ of $S$ planned splits are present; such cells are neither ranked, tested nor used for the improvement."
    cap += _dash_note(grid)
    if skipped_methods:
        cap += f" Not run (not installed): {_latex_escape(', '.join(skipped_methods))}."
    return cap + _left_out_of_table1(grid, plan)


def _dash_note(grid: Grid) -> str:
    """Say what a ``--`` body cell means, where there is one."""
    if not (grid.n == 0).any():
        return ""
    return " --: no split of this row is stored for that setting (the index lists the missing cells)."


def _left_out_of_table1(grid: Grid, plan) -> str:
    """Which rows of the paper's Table 1 (Cai et al., SIGIR 2026) this table does not have, and why."""
    parts = []
    if not any(m.startswith("synthesizeme") for m in grid.methods):
        parts.append("SynthesizeMe (ICL) and (FT), which read the prompts' and responses' text with an LLM "
                     "instead of the reward-model embeddings every row here uses (run them with \\texttt{bench run "
                     "-{}-methods synthesizeme,synthesizeme-ft} on a text dataset)")
    one_model = all(len(specs) <= 1 for specs in plan.roles.values())
    if one_model and any(m in grid.methods for m in ("rm", "mrm")):
        parts.append("the separate Skywork-Reward V1 and V2 rows of the zero-shot reward model and of MRM: each "
                     "dataset here has one feature model, so each has one row (list one dataset spec per feature "
                     "model to get a row per model, docs/paper.md \\S~Real data)")
    if not parts:
        return ""
    return " Rows of the paper's Table 1 (Cai et al., SIGIR 2026) left out here: " + "; ".join(parts) + "."


def caption_table2(grid: Grid, plan, skipped_methods: list[str] = ()) -> str:
    alpha = float(plan.config.get("alpha", 0.05))
    S = int(grid.expected.max()) if grid.expected.size else 0
    cap = (
        f"Ablations of MRM: user-level accuracy (\\%) overall and on the worst 10/20/50\\% of users, mean $\\pm$ std "
        f"over $S={S}$ splits. Bold: best; underlined: second best (complete rows only). $^\\dagger$: differs "
        f"significantly from MRM (crossed users $\\times$ splits $t$-test on the paired per-user differences, "
        f"two-sided; {_table2_family(grid, plan)}; "
        f"$\\alpha={alpha:g}$)."
    )
    if grid.incomplete_rows():
        cap += " $(k/S)$: only $k$ of $S$ planned splits are present; such cells are neither ranked nor tested."
    cap += _dash_note(grid)
    if skipped_methods:
        cap += f" Not run (not installed): {_latex_escape(', '.join(skipped_methods))}."
    return cap


def _table2_family(grid: Grid, plan) -> str:
    """The Holm family of Table 2 in words; when a comparison could not be made, what is missing."""
    ref = (plan.config.get("outputs", {}).get(grid.name) or {}).get("reference")
    ref_label = _latex_escape(plan.method_label(ref)) if ref else "the reference row"
    fam = len(grid.tests)
    if ref not in grid.methods:
        return f"no comparison made: the reference row {ref_label} has no results, so no cell is marked"
    i = grid.methods.index(ref)
    C = len(grid.columns)
    lacking = [j for j in range(C) if not grid.complete(i, j)]
    if len(lacking) == C:
        have = sorted({int(grid.n[i, j]) for j in range(C)})
        k = str(have[0]) if len(have) == 1 else f"{have[0]} to {have[-1]}"
        S = int(grid.expected[i].max()) if C else 0
        return (f"no comparison made: the reference row {ref_label} has only {k} of its {S} planned splits, "
                "a test needs every split of both rows, so no cell is marked")
    if fam == 0:
        return f"no comparison made: no other row is complete where {ref_label} is, so no cell is marked"
    text = f"Holm over all {fam} comparisons of this table"
    if lacking:
        cols = ", ".join(f"{grid.columns[j].group} {grid.columns[j].label}" for j in lacking)
        text += (f", made only in the columns where {ref_label} is complete ({_latex_escape(cols)} untested: "
                 f"{ref_label} lacks splits there)")
    return text

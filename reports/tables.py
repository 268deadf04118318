"""Table 1 layout from stored rows: methods × settings × (Seen, Unseen, Overall), mean ± std.

Ranking uses unrounded means. A method whose cells are missing for some splits of a setting is
marked incomplete: it is shown with the number of splits it has, and it is never bolded,
underlined or compared as if complete.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from bench.metrics import cell_metrics, mean_std

POPS = ("seen", "unseen", "overall")
POP_LABEL = {"seen": "Seen", "unseen": "Unseen", "overall": "Overall"}
REFERENCE_ORDER = ("oracle", "rm", "bt")


def _budget(v) -> str:
    return "all" if v is None or (isinstance(v, float) and np.isnan(v)) or v is pd.NA else str(int(v))


def setting_label(dataset: str, shots, unseen_shots, test_fraction=None) -> str:
    s, u = _budget(shots), _budget(unseen_shots)
    label = dataset if (s, u) == ("all", "all") else f"{dataset} ({s}/{u})"
    if test_fraction is not None and not (isinstance(test_fraction, float) and np.isnan(test_fraction)):
        label += f" [test×{test_fraction:g}]"
    return label


def variant_labels(rows: pd.DataFrame) -> pd.Series:
    """A row label per result row: the method name, qualified only where it is ambiguous.

    Within one setting (dataset, budgets, test fraction), a method run with several parameter
    sets gets ``method[k=v,…]`` (the keys that differ) and one run on several feature models gets
    ``method (model)``. Parameters that differ only *between* settings (e.g. MRM's per-family
    learning rates) do not split a method into several rows.
    """
    labels = rows["method"].astype(str).copy()
    setting = pd.Series(
        [setting_label(d, s, u, t) for d, s, u, t in zip(rows["dataset"], rows["shots"], rows["unseen_shots"], rows["test_fraction"])],
        index=rows.index,
    )
    feats = rows["features"].astype(str) if "features" in rows.columns else pd.Series("", index=rows.index)
    for (m, _st), g in rows.groupby([rows["method"], setting], sort=False):
        variants = g["params"].unique()
        models = feats[g.index].unique()
        if len(variants) <= 1 and len(models) <= 1:
            continue
        dicts = {p: json.loads(p) for p in variants}
        keys = sorted({k for d in dicts.values() for k in d})
        differing = [k for k in keys if len({json.dumps(d.get(k), sort_keys=True) for d in dicts.values()}) > 1]
        for idx, p, f in zip(g.index, g["params"], feats[g.index]):
            label = m
            if differing:
                label += "[" + ",".join(f"{k}={dicts[p].get(k)}" for k in differing) + "]"
            if len(models) > 1:
                label += f" ({f.rstrip('/').split('/')[-1]})"
            labels[idx] = label
    return labels


@dataclass
class Table:
    """Numbers behind a rendered table: means/stds/n per (row, setting, population)."""

    rows: list[str]
    settings: list[str]
    mean: pd.DataFrame  # index rows, columns MultiIndex (setting, pop)
    std: pd.DataFrame
    n: pd.DataFrame
    expected: dict[str, int]  # splits per setting
    missing: dict[tuple[str, str], list[int]] = field(default_factory=dict)

    def complete(self, row: str, setting: str) -> bool:
        return (row, setting) not in self.missing and bool(self.n.loc[row, (setting, "overall")] > 0)

    def ranks(self, setting: str, pop: str) -> dict[str, int]:
        """1 = best, 2 = second, among complete non-oracle rows (unrounded means)."""
        cands = [
            r
            for r in self.rows
            if r != "oracle" and self.complete(r, setting) and not np.isnan(self.mean.loc[r, (setting, pop)])
        ]
        ordered = sorted(cands, key=lambda r: -self.mean.loc[r, (setting, pop)])
        return {r: i + 1 for i, r in enumerate(ordered[:2])}

    def cell_text(self, row: str, setting: str, pop: str, scale: float = 100.0, digits: int = 1) -> str:
        n = int(self.n.loc[row, (setting, pop)]) if not pd.isna(self.n.loc[row, (setting, pop)]) else 0
        if n == 0:
            return "–"
        m = self.mean.loc[row, (setting, pop)] * scale
        s = self.std.loc[row, (setting, pop)] * scale
        txt = f"{m:.{digits}f} ± {s:.{digits}f}" if not np.isnan(s) else f"{m:.{digits}f}"
        if (row, setting) in self.missing:
            txt += f" ({n}/{self.expected[setting]})"
        return txt


def split_level(rows: pd.DataFrame) -> pd.DataFrame:
    """One record per cell: setting, variant, seed and its split-level metrics."""
    rows = rows.copy()
    rows["variant"] = variant_labels(rows)
    rows["setting"] = [
        setting_label(d, s, u, t)
        for d, s, u, t in zip(rows["dataset"], rows["shots"], rows["unseen_shots"], rows["test_fraction"])
    ]
    per_cell = cell_metrics(rows, by=("cell",))
    info = rows.drop_duplicates("cell").set_index("cell")[["setting", "variant", "method", "split_seed", "dataset"]]
    return per_cell.join(info, on="cell")


def build_table(rows: pd.DataFrame, row_order: list[str] | None = None, settings: list[str] | None = None) -> Table:
    sl = split_level(rows)
    settings = settings or list(dict.fromkeys(sl["setting"]))
    variants = list(dict.fromkeys(sl["variant"]))
    if row_order:
        variants = [v for v in row_order if v in variants] + [v for v in variants if v not in row_order]
    else:
        ref = [v for r in REFERENCE_ORDER for v in variants if v == r]
        variants = ref + sorted(v for v in variants if v not in ref)
    cols = pd.MultiIndex.from_product([settings, list(POPS)])
    mean = pd.DataFrame(np.nan, index=variants, columns=cols)
    std = mean.copy()
    n = pd.DataFrame(0, index=variants, columns=cols)
    expected, missing = {}, {}
    for setting in settings:
        ss = sl[sl["setting"] == setting]
        all_seeds = sorted(ss["split_seed"].unique())
        expected[setting] = len(all_seeds)
        for v in variants:
            g = ss[ss["variant"] == v]
            if len(g) == 0:
                missing[(v, setting)] = all_seeds
                continue
            lacking = sorted(set(all_seeds) - set(g["split_seed"]))
            if lacking:
                missing[(v, setting)] = lacking
            for pop in POPS:
                m, s, k = mean_std(g[pop].to_numpy())
                mean.loc[v, (setting, pop)] = m
                std.loc[v, (setting, pop)] = s
                n.loc[v, (setting, pop)] = k
    return Table(variants, settings, mean, std, n, expected, missing)


BEST, SECOND = "*", "+"  # visible without colour (a log file); bold / underline add emphasis on a terminal


def render_rich(table: Table, title: str | None = None):
    """One rich table per setting (Seen / Unseen / Overall under the setting's title), the number
    of splits in the title, best/second marked with ``*``/``+`` (and bold/underline), a legend."""
    from rich.console import Group
    from rich.table import Table as RichTable
    from rich.text import Text

    parts = []
    ranks = {(s, p): table.ranks(s, p) for s in table.settings for p in POPS}
    for setting in table.settings:
        n = table.expected.get(setting, 0)
        spread = f"mean ± std over {n} splits" if n > 1 else "1 split"
        head = f"{setting} — accuracy (%), {spread}" if title is None else f"{title} — {setting} ({spread})"
        parts.append(Text(head, style="bold"))
        t = RichTable(show_lines=False)
        t.add_column("Method", style="bold")
        for pop in POPS:
            t.add_column(POP_LABEL[pop], justify="right")
        for r in table.rows:
            cells = []
            for p in POPS:
                txt = table.cell_text(r, setting, p)
                rk = ranks[(setting, p)].get(r)
                if rk == 1:
                    cells.append(Text(f"{txt} {BEST}", style="bold"))
                elif rk == 2:
                    cells.append(Text(f"{txt} {SECOND}", style="underline"))
                else:
                    cells.append(Text(f"{txt}  " if any(ranks[(setting, q)] for q in POPS) else txt))
            t.add_row(r, *cells)
        parts.append(t)
    legend = f"{BEST} best, {SECOND} second best (complete rows only; oracle not ranked)"
    if table.missing:
        legend += "\n(k/S): results for only k of the S splits; not ranked"
    parts.append(Text(legend))
    return Group(*parts)


def _latex_escape(s: str) -> str:
    for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
        s = s.replace(a, b)
    return s


def to_latex(table: Table, caption: str | None = None, label: str = "tab:main", header: str = "") -> str:
    """LaTeX (booktabs) via pandas Styler: bold best, underline second, markers in the caption."""
    from bench.reports.latex import minus

    data = pd.DataFrame(
        [[minus(table.cell_text(r, s, p).replace("±", r"$\pm$")) for s in table.settings for p in POPS] for r in table.rows],
        index=[_latex_escape(r) for r in table.rows],
        # "Method" heads the row labels on the second header line (an index name would add a row)
        columns=pd.MultiIndex.from_tuples([(_latex_escape(s), POP_LABEL[p]) for s in table.settings for p in POPS],
                                          names=[None, "Method"]),
    )
    styler = data.style
    for j, (s, p) in enumerate((s, p) for s in table.settings for p in POPS):
        ranks = table.ranks(s, p)
        col = data.columns[j]
        for r, rk in ranks.items():
            i = table.rows.index(r)
            idx = data.index[i]
            styler = styler.set_properties(
                subset=pd.IndexSlice[[idx], [col]],
                **({"textbf": "--rwrap"} if rk == 1 else {"underline": "--rwrap"}),
            )
    incomplete = sorted({r for (r, _s) in table.missing})
    cap = caption or (
        "User-level accuracy (\\%), mean $\\pm$ std over splits. Bold: best; underlined: second best "
        "(among rows complete in that column; the oracle is a ceiling and not ranked)."
    )
    if incomplete:
        cap += " A count $(k/S)$ marks a row with results for only $k$ of the $S$ splits of that setting; such rows are not ranked."
    latex = styler.to_latex(
        hrules=True,
        multicol_align="c",
        column_format="l" + "r" * (len(table.settings) * len(POPS)),
        caption=cap,
        label=label,
        position="t",
        environment="table*" if len(table.settings) > 1 else "table",
    )
    return (header + latex) if header else latex

"""The paper's figures: compute the plotted data once (a tidy frame, also saved as CSV), then plot.

Every figure is written three ways: ``NAME.pdf`` (vector, for the paper), ``NAME.png`` (for a quick
look and the index page) and ``NAME.csv`` (exactly the numbers plotted). Headless (Agg), a fixed
style, no timestamps in the PDF (``CreationDate`` off), so a rerun on the same results writes the
same bytes.

Missing data is drawn as such: a line whose splits are incomplete is dashed with hollow markers and
its legend entry says ``(k/S splits)``; nothing is silently averaged as if complete.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd

from bench.metrics import mean_std

FIG_RC = {
    "font.family": "DejaVu Sans",
    "font.size": 8,
    "axes.titlesize": 8.5,
    "axes.labelsize": 8,
    "legend.fontsize": 6.5,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.2,
    "lines.markersize": 4,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.linewidth": 0.4,
    "grid.alpha": 0.5,
    "legend.frameon": False,
    "pdf.fonttype": 42,
    "svg.hashsalt": "bench",
    "savefig.dpi": 200,
    "figure.dpi": 100,
}

# squares: personalized input; triangles: personalized parameter (as the paper's Fig. 3)
KIND_MARKER = {"personalized input": "s", "personalized parameter": "^", "meta-learning": "*", "reference": "o", "other": "D"}
SINGLE = 3.4  # inches, one column
DOUBLE = 7.0


def _palette(n: int) -> list:
    import seaborn as sns

    return list(sns.color_palette("colorblind", max(n, 3)))


def _mpl():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path, data: pd.DataFrame) -> list[Path]:
    """PDF (no creation date) + PNG + CSV of the plotted data; returns the paths."""
    plt = _mpl()
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    pdf, png, csv = stem.with_suffix(".pdf"), stem.with_suffix(".png"), stem.with_suffix(".csv")
    # constrained layout keeps legends and labels inside the figure: no second "tight" draw needed
    fig.savefig(pdf, metadata={"CreationDate": None, "ModDate": None})
    fig.savefig(png, metadata={"Software": None})
    plt.close(fig)
    data.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    return [pdf, png, csv]


def summarise(values: np.ndarray, expected: int, rows: pd.DataFrame | None = None, metric: str | None = None) -> dict:
    """mean, std (ddof 1), n, expected, complete, and a 95% interval.

    With the per-user ``rows`` of the line's cells and the ``metric``, the interval is the crossed
    users × splits t-interval (:func:`bench.comparison.level`: the users' and the splits' variance
    both count; docs/paper.md § Statistics). Without rows it is a Student t-interval over splits,
    which is right only for quantities whose splits are independent given the users (the
    selection-bias curve)."""
    from scipy.special import stdtrit  # Student t quantile (scipy.stats is slow to import)

    m, s, n = mean_std(values)
    nan = float("nan")
    if rows is not None and metric is not None:
        lo = hi = nan
        if n > 1 and len(rows):
            from bench.comparison import level

            r = level(rows, metric)
            if r.ok:
                lo, hi = r.ci_low, r.ci_high
    else:
        half = float(stdtrit(n - 1, 0.975) * s / math.sqrt(n)) if n > 1 and np.isfinite(s) else nan
        lo, hi = m - half, m + half
    return {"mean": m, "std": s, "ci_low": lo, "ci_high": hi, "n_splits": n, "expected": expected,
            "complete": bool(n == expected and n > 0)}


def _legend_label(label: str, complete: bool, n: int, expected: int, panel: str = "") -> str:
    """``label``, or for a line missing splits ``label (panel b: 2/3 splits)`` (the panel named where
    the figure has several, since one legend serves them all)."""
    if complete:
        return label
    where = f"panel {panel}: " if panel else ""
    return f"{label} ({where}{n}/{expected} splits)"


def whisker_note(data: pd.DataFrame) -> str:
    """What the whiskers of a mean ± std figure are."""
    S = int(data["expected"].max()) if len(data) and "expected" in data else 0
    return f"Whiskers: ±1 s.d. over {'the ' + str(S) + ' ' if S else ''}splits"


CHANCE = "chance (50%)"
# two lines: on a single-column figure one line is wider than the figure and gets clipped
BAND_NOTE = "Band: 95% t-interval over splits, given these users\n(docs/paper.md § Statistics)"
INTERVAL_NOTE = "Whiskers: 95% interval, users × splits (docs/paper.md § Statistics)"


def _style_kwargs(complete: bool, color, marker: str) -> dict:
    return {"color": color, "marker": marker, "linestyle": "-" if complete else "--",
            "markerfacecolor": color if complete else "white", "markeredgecolor": color,
            "markersize": 7 if marker == "*" else 4}


def _dodge(i: int, n: int, width: float = 0.06) -> float:
    """Small horizontal offset so that error bars of several lines do not hide each other."""
    return (i - (n - 1) / 2) * width


# ---------------------------------------------------------------------------- Fig. 3: worst-k%


def worst_k_data(slots: pd.DataFrame, settings: list[tuple[str, str]], variants: list[tuple[str, str, str]],
                 ks: list[int], population: str = "overall") -> pd.DataFrame:
    """``settings`` = [(id, label)], ``variants`` = [(label, method, kind)]: mean and s.d. over splits.

    No interval: the crossed interval of one method's worst-k level undercovers with few users
    (simulated 0.87–0.92 at 40 users; docs/paper.md § Statistics), so Fig. 3 shows ±1 s.d."""
    recs = []
    for sid, slabel in settings:
        for label, method, kind in variants:
            g = slots[(slots["setting"] == sid) & (slots["variant"] == label)]
            if not len(g):
                continue
            done = g[g["state"] == "done"]
            for k in ks:
                col = f"{population}_worst{k}"
                vals = done[col].to_numpy(np.float64) if col in done else np.array([])
                stats = summarise(vals, g["seed"].nunique())
                del stats["ci_low"], stats["ci_high"]
                recs.append({"setting": slabel, "variant": label, "method": method, "kind": kind, "k": k, **stats})
    return pd.DataFrame.from_records(recs)


def plot_worst_k(data: pd.DataFrame, stem: Path, title: str = "") -> list[Path]:
    plt = _mpl()
    with plt.rc_context(FIG_RC):
        panels = list(dict.fromkeys(data["setting"])) if len(data) else ["(no data)"]
        fig, axes = plt.subplots(1, len(panels), figsize=(DOUBLE if len(panels) > 1 else SINGLE, 2.5), squeeze=False,
                                 layout="constrained")
        variants = list(dict.fromkeys(data["variant"])) if len(data) else []
        colors = dict(zip(variants, _palette(len(variants))))
        for p, (ax, setting) in enumerate(zip(axes[0], panels)):
            d = data[data["setting"] == setting] if len(data) else data
            ks = sorted(d["k"].unique()) if len(d) else [10, 20, 50]
            for vi, v in enumerate(variants):
                g = d[d["variant"] == v].sort_values("k")
                if not len(g):
                    continue
                complete = bool(g["complete"].all())
                kw = _style_kwargs(complete, colors[v], KIND_MARKER.get(g["kind"].iloc[0], "o"))
                x = [ks.index(k) + _dodge(vi, len(variants)) for k in g["k"]]
                # whiskers: ±1 s.d. over splits, descriptive (a 95% interval for a worst-k level does not
                # hold its level with 40 users in simulation: docs/paper.md § Statistics)
                ax.errorbar(x, g["mean"] * 100, yerr=g["std"].fillna(0) * 100, capsize=2, elinewidth=0.6,
                            label=_legend_label(v, complete, int(g["n_splits"].min()), int(g["expected"].max()),
                                                chr(97 + p) if len(panels) > 1 else ""), **kw)
            if _has_data(d):
                ax.axhline(50, color="0.4", linewidth=0.6, linestyle=":", zorder=0, label=CHANCE)
            else:
                no_data(ax)
            ax.set_xticks(range(len(ks)), [f"Worst {k}%" for k in ks])
            ax.set_ylabel("Accuracy (%)")
            ax.set_title(_panel_title(p, setting, len(panels)))
        _figure_legend(fig, axes[0], title=whisker_note(data) if _has_data(data) else None)
        if title:
            fig.suptitle(title)
        return save(fig, stem, data)


def _panel_title(p: int, text: str, n_panels: int) -> str:
    import textwrap

    width = 30 if n_panels > 2 else 60
    return "\n".join(textwrap.wrap(f"({chr(97 + p)}) {text}", width))


def _figure_legend(fig, axes, title: str | None = None, ncol: int = 4) -> None:
    """One legend below the panels (outside the axes, so it never covers data); ``title`` says
    what the whiskers or bands are."""
    seen: dict[str, object] = {}
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            seen.setdefault(lab, h)
    if CHANCE in seen:  # the reference line last
        seen[CHANCE] = seen.pop(CHANCE)
    if seen:
        fig.legend(list(seen.values()), list(seen), loc="outside lower center", ncol=min(len(seen), ncol),
                   title=title, title_fontsize=FIG_RC["legend.fontsize"])


# ---------------------------------------------------------------------------- Fig. 4 / Fig. 5: sweeps


def sweep_data(slots: pd.DataFrame, metrics: list[str], panel: int | None = None) -> pd.DataFrame:
    """One record per (panel, swept value, metric) from a sweep output's slots."""
    recs = []
    s = slots if panel is None else slots[slots["panel"] == panel]
    for (pn, param), g0 in s.groupby(["panel", "sweep_param"], sort=True):
        values = list(dict.fromkeys(g0["sweep_value"]))
        for v in sorted(values, key=float):
            g = g0[g0["sweep_value"] == v]
            done = g[g["state"] == "done"]
            for metric in metrics:
                vals = done[metric].to_numpy(np.float64) if metric in done else np.array([])
                recs.append({"panel": int(pn), "param": param, "value": v, "metric": metric,
                             **summarise(vals, g["seed"].nunique())})
    return pd.DataFrame.from_records(recs)


METRIC_NAME = {"overall": "Overall", "overall_worst10": "Worst 10%", "overall_worst20": "Worst 20%",
               "overall_worst50": "Worst 50%"}


def plot_rho(data: pd.DataFrame, stem: Path, param_label: str = "Threshold ratio ρ", fixed: str = "") -> list[Path]:
    """Fig. 4: (a) overall accuracy per ρ (points: a zoomed axis, so no bars), (b) worst-k% per ρ
    (grouped bars from 0). ``fixed`` names what every cell shares (e.g. "meta batch 8")."""
    plt = _mpl()
    with plt.rc_context(FIG_RC):
        fig, (a, b) = plt.subplots(1, 2, figsize=(DOUBLE * 0.75, 2.6), gridspec_kw={"width_ratios": [1, 1.6]},
                                 layout="constrained")
        values = list(dict.fromkeys(data["value"])) if len(data) else []
        colors = _palette(len(values))
        d = data[data["metric"] == "overall"] if len(data) else data
        for i, v in enumerate(values):
            r = d[d["value"] == v]
            if not len(r):
                continue
            r = r.iloc[0]
            kw = _style_kwargs(bool(r["complete"]), colors[i], "o")
            kw.update(linestyle="none", markersize=5)
            a.errorbar(i, r["mean"] * 100, yerr=(r["std"] if np.isfinite(r["std"]) else 0) * 100, capsize=2,
                       elinewidth=0.6, **kw)
        if not _has_data(d):
            no_data(a)
            no_data(b)
        a.set_xticks(range(len(values)), [value_label(v) for v in values])
        a.set_xlim(-0.5, max(len(values), 1) - 0.5)
        a.set_xlabel(param_label)
        a.set_ylabel("Overall accuracy (%)")
        a.set_title("(a) Overall")
        _tight_ylim(a, d)
        ks = [m for m in ("overall_worst10", "overall_worst20", "overall_worst50") if len(data) and m in set(data["metric"])]
        width = 0.8 / max(len(values), 1)
        symbol = param_label.split()[-1] if param_label else "value"
        for i, v in enumerate(values):
            r = data[(data["value"] == v) & (data["metric"].isin(ks))].set_index("metric").reindex(ks)
            x = np.arange(len(ks)) + (i - (len(values) - 1) / 2) * width
            complete = bool(r["complete"].fillna(False).all())
            b.bar(x, r["mean"] * 100, width=width, yerr=r["std"].fillna(0) * 100, color=colors[i], capsize=1.5,
                  edgecolor="black", linewidth=0.4, hatch=None if complete else "//", error_kw={"elinewidth": 0.5},
                  label=f"{symbol} = {value_label(v)}" + ("" if complete else " (incomplete: hatched, hollow)"))
        b.set_ylim(bottom=0)
        b.set_xticks(range(len(ks)), [METRIC_NAME[k] for k in ks])
        b.set_ylabel("Accuracy (%)")
        b.set_title("(b) Worst users")
        if fixed:
            fig.suptitle(f"All cells: {fixed}", fontsize=FIG_RC["axes.titlesize"])
        if values:
            _figure_legend(fig, [b], title=whisker_note(data) if _has_data(data) else None)
        return save(fig, stem, data)


PARAM_NAME = {"meta_batch": "meta batch", "rho": "ρ", "gamma": "γ"}


def fixed_text(params: dict | None) -> str:
    """The parameters every cell of a figure (or panel) shares, as the paper says them: "meta batch 8"."""
    out = []
    for k, v in (params or {}).items():
        name = PARAM_NAME.get(k, k)
        out.append(f"{name} {value_label(v)}" if len(name) > 1 else f"{name} = {value_label(v)}")
    return ", ".join(out)


def no_data(ax, what: str = "no results yet") -> None:
    """An empty panel says so instead of showing meaningless ticks."""
    ax.text(0.5, 0.5, what, transform=ax.transAxes, ha="center", va="center", color="0.4")
    ax.set_yticks([])


def _has_data(d: pd.DataFrame) -> bool:
    return bool(len(d)) and bool(np.isfinite(d["mean"].to_numpy(dtype=float)).any())


def value_label(v, ticks: dict | None = None) -> str:
    """A swept value as a tick label: 2 not 2.0; an override from the experiment file (γ = 0 → "0*")."""
    ticks = ticks or {}
    for k in (v, str(v)):
        if k in ticks:
            return str(ticks[k])
    try:
        f = float(v)
    except (TypeError, ValueError):
        return str(v)
    for k, lab in ticks.items():
        try:
            if float(k) == f:
                return str(lab)
        except (TypeError, ValueError):
            continue
    return f"{f:g}"


def _tight_ylim(ax, d: pd.DataFrame) -> None:
    if not len(d) or not np.isfinite(d["mean"]).any():
        return
    lo = np.nanmin((d["mean"] - d["std"].fillna(0)) * 100)
    hi = np.nanmax((d["mean"] + d["std"].fillna(0)) * 100)
    pad = max((hi - lo) * 0.3, 0.5)
    ax.set_ylim(lo - pad, hi + pad)


def plot_two_metric_sweeps(data: pd.DataFrame, stem: Path, panels: list[dict]) -> list[Path]:
    """Fig. 5: per panel, overall accuracy (left axis) and worst-10% accuracy (right axis) vs the swept value."""
    plt = _mpl()
    with plt.rc_context(FIG_RC):
        fig, axes = plt.subplots(1, len(panels), figsize=(DOUBLE * 0.8, 2.5), squeeze=False, layout="constrained")
        c_over, c_worst = _palette(2)[:2]
        legend: dict[str, object] = {}
        for p, (ax, spec) in enumerate(zip(axes[0], panels)):
            d = data[data["panel"] == p] if len(data) else data
            values = list(dict.fromkeys(d["value"])) if len(d) else []
            ticks = spec.get("tick_labels") or {}
            labels = [value_label(v, ticks) for v in values]
            x = np.arange(len(values))
            right = ax.twinx()
            right.spines["right"].set_visible(True)
            right.grid(False)
            for shift, (axis, metric, color, name) in zip((-0.05, 0.05), ((ax, "overall", c_over, "Overall"),
                                                                        (right, "overall_worst10", c_worst, "Worst 10%"))):
                r = d[d["metric"] == metric].set_index("value").reindex(values) if len(d) else d
                if not len(r):
                    continue
                complete = bool(r["complete"].fillna(False).all())
                h = axis.errorbar(x + shift, r["mean"] * 100, yerr=r["std"].fillna(0) * 100, capsize=2, elinewidth=0.6,
                                  **_style_kwargs(complete, color, "o" if metric == "overall" else "s"))
                legend.setdefault(name + ("" if complete else f" (panel {chr(97 + p)}: incomplete)"), h)
                axis.set_ylabel(f"{name} accuracy (%)", color=color)
                axis.tick_params(axis="y", colors=color)
            if not _has_data(d):
                no_data(ax)
                right.set_yticks([])
            ax.set_xticks(x, labels)
            xlabel = spec.get("xlabel", d["param"].iloc[0] if len(d) else "")
            ax.set_xlabel(xlabel + (f" ({spec['note']})" if spec.get("note") else ""))
            fixed = fixed_text(spec.get("params"))
            ax.set_title(f"({chr(97 + p)}) {xlabel}" + (f", {fixed}" if fixed else ""))
        if legend:
            fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncol=len(legend),
                       title=whisker_note(data) if _has_data(data) else None, title_fontsize=FIG_RC["legend.fontsize"])
        return save(fig, stem, data)


# ---------------------------------------------------------------------------- Fig. 6: few-shot


def few_shot_data(slots: pd.DataFrame, settings: list[tuple[str, str]], variants: list[tuple[str, str, str]],
                  rows_of=None) -> pd.DataFrame:
    """Unseen accuracy per support budget; the band is the crossed 95% interval (``rows_of(keys)``
    gives the cells' per-user rows; without it the band is NaN)."""
    recs = []
    for sid, slabel in settings:
        for label, method, kind in variants:
            g0 = slots[(slots["setting"] == sid) & (slots["variant"] == label)]
            for u in dict.fromkeys(g0["unseen_label"]):
                g = g0[g0["unseen_label"] == u]
                done = g[g["state"] == "done"]
                vals = done["unseen"].to_numpy(np.float64) if "unseen" in done else np.array([])
                rows = rows_of(list(done["key"])) if rows_of is not None else pd.DataFrame()
                recs.append({"setting": slabel, "variant": label, "method": method, "kind": kind, "unseen_shots": u,
                             **summarise(vals, g["seed"].nunique(), rows, "unseen")})
    return pd.DataFrame.from_records(recs)


def plot_few_shot(data: pd.DataFrame, stem: Path) -> list[Path]:
    plt = _mpl()
    with plt.rc_context(FIG_RC):
        panels = list(dict.fromkeys(data["setting"])) if len(data) else ["(no data)"]
        fig, axes = plt.subplots(1, len(panels), figsize=(DOUBLE, 2.5), squeeze=False, layout="constrained")
        variants = list(dict.fromkeys(data["variant"])) if len(data) else []
        colors = dict(zip(variants, _palette(len(variants))))
        for p, (ax, setting) in enumerate(zip(axes[0], panels)):
            d = data[data["setting"] == setting] if len(data) else data
            budgets = sorted(set(d["unseen_shots"]), key=lambda b: (b == "all", int(b) if b != "all" else 0)) if len(d) else []
            for vi, v in enumerate(variants):
                g = d[d["variant"] == v].set_index("unseen_shots").reindex(budgets).dropna(subset=["expected"])
                if not len(g):
                    continue
                complete = bool(g["complete"].all())
                # dodged like Fig. 3: six shaded bands on one panel would hide each other
                x = np.array([budgets.index(b) for b in g.index], dtype=float) + _dodge(vi, len(variants))
                kw = _style_kwargs(complete, colors[v], KIND_MARKER.get(g["kind"].iloc[0], "o"))
                m = g["mean"].to_numpy(np.float64) * 100
                ax.plot(x, m, label=_legend_label(v, complete, int(g["n_splits"].min()), int(g["expected"].max()),
                                                  chr(97 + p) if len(panels) > 1 else ""), **kw)
                # an accuracy interval past 0 or 100 % says nothing more than 0 or 100 %
                lo, hi = (np.clip(g[c].to_numpy(np.float64) * 100, 0, 100) for c in ("ci_low", "ci_high"))
                ok = np.isfinite(lo) & np.isfinite(hi)
                if ok.any():
                    eb = ax.errorbar(x[ok], m[ok], yerr=[np.maximum(m - lo, 0)[ok], np.maximum(hi - m, 0)[ok]], fmt="none",
                                     ecolor=colors[v], elinewidth=0.6, capsize=2)
                    if not complete:
                        for c in eb[2]:
                            c.set_linestyle("--")
            if not _has_data(d):
                no_data(ax)
            ax.set_xticks(range(len(budgets)), budgets)
            ax.set_xlabel("Support pairs per unseen user")
            ax.set_ylabel("Unseen accuracy (%)")
            ax.set_title(_panel_title(p, setting, len(panels)))
        _figure_legend(fig, axes[0], title=INTERVAL_NOTE if _has_data(data) else None)
        return save(fig, stem, data)


# ---------------------------------------------------------------------------- Fig. 7: parameters


def params_data(formulas: dict[str, dict], users: list[int]) -> pd.DataFrame:
    """``formulas``: label → {method, shared, per_user, checked, dim}; total = shared + per_user·N."""
    recs = []
    for label, f in formulas.items():
        for n in users:
            recs.append({"variant": label, "method": f["method"], "n_users": int(n), "shared": int(f["shared"]),
                         "per_user": int(f["per_user"]), "total": int(f["shared"] + f["per_user"] * n),
                         "dim": f.get("dim"), "checked": f["checked"]})
    return pd.DataFrame.from_records(recs)


def plot_params(data: pd.DataFrame, stem: Path) -> list[Path]:
    plt = _mpl()
    with plt.rc_context(FIG_RC):
        fig, ax = plt.subplots(figsize=(SINGLE, 2.4), layout="constrained")
        variants = list(dict.fromkeys(data["variant"])) if len(data) else []
        colors = dict(zip(variants, _palette(len(variants))))
        markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
        for i, v in enumerate(variants):
            g = data[data["variant"] == v].sort_values("n_users")
            ax.plot(g["n_users"], g["total"], marker=markers[i % len(markers)], color=colors[v], label=v)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("Number of users")
        ax.set_ylabel("Trainable parameters")
        dims = sorted({int(x) for x in data["dim"].dropna()}) if len(data) and "dim" in data else []
        if len(dims) == 1:
            ax.set_title(f"Feature dimension D = {dims[0]}")
        if variants:  # below the axes: inside, the lines of many methods leave it no free corner
            fig.legend(loc="outside lower center", ncol=min(len(variants), 3))
        return save(fig, stem, data)


# ---------------------------------------------------------------------------- selection bias


def plot_selection_bias(curve: pd.DataFrame, picks: pd.DataFrame, stem: Path, data: pd.DataFrame) -> list[Path]:
    """Mean test accuracy per epoch (band: 95% interval of the mean over splits); each split's test-selected epoch."""
    plt = _mpl()
    with plt.rc_context(FIG_RC):
        fig, ax = plt.subplots(figsize=(SINGLE, 2.9), layout="constrained")
        c1, c2, c3 = _palette(3)[:3]
        if len(curve):
            ax.plot(curve["epoch"], curve["mean"] * 100, color=c1, label="Overall test accuracy (mean over splits)")
            ax.fill_between(curve["epoch"], curve["ci_low"] * 100, curve["ci_high"] * 100, color=c1, alpha=0.2, linewidth=0)
        if len(picks):
            ax.scatter(picks["selected_epoch"], picks["official"] * 100, color=c2, marker="v", zorder=4, s=16,
                       label="Best test epoch of each split (official)")
            ax.scatter(picks["final_epoch"], picks["honest"] * 100, color=c3, marker="o", zorder=3, s=10,
                       label="Final epoch of each split (honest)")
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("Epoch")
        ax.set_ylabel("Overall accuracy (%)")
        ax.set_title("Analysis: selecting the epoch on test data")
        handles, labels = ax.get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="outside lower center", ncol=1, title=BAND_NOTE if len(curve) else None,
                       title_fontsize=FIG_RC["legend.fontsize"])
        return save(fig, stem, data)

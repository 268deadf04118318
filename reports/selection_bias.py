"""Rendering the selection-bias analysis: the official protocol's number next to the honest one.

*Honest*: the model after its fixed training budget (what every table reports).
*Official*: the epoch with the highest overall **test** accuracy among the per-epoch evaluations
(the first such epoch, as MRM's ``train.py``), with seen/unseen taken at that epoch.
*Optimism* = official − honest per split. Its interval is a Student t-interval over splits: given
the benchmark's users, splits are independent draws of the protocol's randomness, so the estimand
is the expected optimism on these users (docs/paper.md § Statistics; its coverage is checked by
tests/test_calibration.py). This is an analysis of a protocol defect; its numbers never enter
Table 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from bench.stats import corrected_resampled_ttest

METRICS = [("seen", "Seen"), ("unseen", "Unseen"), ("overall", "Overall"), ("overall_worst10", "Worst 10%")]


def add_tuned(picks: pd.DataFrame, table: pd.DataFrame, tuned: pd.DataFrame | None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The third number: the method tuned on validation (``METHOD@tuned``, bench/tuning.py) on the
    same splits, and its paired difference from the honest fixed-budget number. ``tuned``: slots
    with ``seed`` and the split-level metric columns. Only splits present in both are used."""
    if tuned is None or not len(tuned):
        return picks, table
    t = tuned.drop_duplicates("seed").set_index("seed")
    picks = picks.copy()
    for m, _ in METRICS:
        picks[f"tuned_{m}"] = picks["split_seed"].map(t[m]) if m in t else np.nan
    both = picks[np.isfinite(picks["tuned_overall"])]
    table = table.copy()
    for col in ("tuned_mean", "tuned_std", "tuned_gain_mean", "tuned_gain_ci_low", "tuned_gain_ci_high", "tuned_n_splits"):
        table[col] = np.nan
    for i, (m, _) in enumerate(METRICS):
        x = both[f"tuned_{m}"].to_numpy(np.float64)
        h = both[f"honest_{m}"].to_numpy(np.float64)
        if not len(x):
            continue
        d = x - h
        tt = corrected_resampled_ttest(d, 1.0, 0.0) if len(d) > 1 else None  # t over splits, as the optimism
        table.loc[i, ["tuned_mean", "tuned_std", "tuned_gain_mean", "tuned_n_splits"]] = [
            x.mean(), x.std(ddof=1) if len(x) > 1 else np.nan, d.mean(), len(d)]
        if tt is not None:
            table.loc[i, ["tuned_gain_ci_low", "tuned_gain_ci_high"]] = [tt.ci_low, tt.ci_high]
    return picks, table


def _tuned_lines(table: pd.DataFrame, pm: str, bracket=("[", "]")) -> dict[str, list[str]]:
    if "tuned_mean" not in table or not np.isfinite(table["tuned_mean"]).any():
        return {}
    n = int(np.nanmax(table["tuned_n_splits"]))
    return {
        f"Tuned on validation (@tuned, {n} splits)": [_pm(r.tuned_mean, r.tuned_std, pm) for r in table.itertuples()],
        "Tuned $-$ honest" if pm != "±" else "Tuned − honest [95% CI]": [
            f"{r.tuned_gain_mean * 100:+.2f} {bracket[0]}{r.tuned_gain_ci_low * 100:+.2f}, {r.tuned_gain_ci_high * 100:+.2f}{bracket[1]}"
            if np.isfinite(r.tuned_gain_ci_low) and np.isfinite(r.tuned_gain_ci_high)
            else f"{r.tuned_gain_mean * 100:+.2f} {_interval(np.nan, np.nan, tex=False, n_splits=r.tuned_n_splits)}"
            for r in table.itertuples()],
    }


def summarise(traj: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(per-split picks, per-epoch curve, table) from stored trajectories."""
    from bench.reports.figures import summarise as summ

    picks, curve_recs = [], []
    for seed, g in traj.groupby("split_seed", sort=True):
        ep = g[g["stage"] == "epoch"].sort_values("epoch")
        fin = g[g["stage"] == "final"].iloc[0]
        best = ep.iloc[int(np.argmax(ep["overall"].to_numpy()))]  # first maximum, as the official loop
        rec = {"split_seed": int(seed), "selected_epoch": int(best["epoch"]), "final_epoch": int(fin["epoch"]),
               "n_epochs": len(ep), "n_seen": int(fin["n_seen"]), "n_unseen": int(fin["n_unseen"]),
               "stored_overall": float(fin.get("stored_overall", np.nan))}
        for m, _ in METRICS:
            rec[f"honest_{m}"] = float(fin[m])
            rec[f"official_{m}"] = float(best[m])
        rec["honest"], rec["official"] = rec["honest_overall"], rec["official_overall"]
        picks.append(rec)
    picks_f = pd.DataFrame.from_records(picks)
    ep_all = traj[traj["stage"] == "epoch"]
    for e, g in ep_all.groupby("epoch", sort=True):
        curve_recs.append({"epoch": int(e), **summ(g["overall"].to_numpy(np.float64), len(picks_f))})
    curve = pd.DataFrame.from_records(curve_recs)
    rows = []
    for m, label in METRICS:
        h = picks_f[f"honest_{m}"].to_numpy()
        o = picks_f[f"official_{m}"].to_numpy()
        d = o - h
        tt = corrected_resampled_ttest(d, 1.0, 0.0)  # n_test = 0: the plain one-sample t over splits
        rows.append({"metric": label, "honest_mean": h.mean(), "honest_std": h.std(ddof=1) if len(h) > 1 else np.nan,
                     "official_mean": o.mean(), "official_std": o.std(ddof=1) if len(o) > 1 else np.nan,
                     "optimism_mean": d.mean(), "optimism_ci_low": tt.ci_low, "optimism_ci_high": tt.ci_high,
                     "p": tt.pvalue, "n_splits": len(d)})
    return picks_f, curve, pd.DataFrame.from_records(rows)


def _pm(m: float, s: float, pm: str) -> str:
    return f"{m * 100:.1f} {pm} {s * 100:.1f}" if np.isfinite(s) else f"{m * 100:.1f}"


def _signed(v: float, tex: bool = True) -> str:
    return f"{v * 100:+.2f}"  # LaTeX minus signs: reports.latex.minus on the whole cell


def _interval(lo: float, hi: float, tex: bool = True, n_splits: float = 1) -> str:
    if not (np.isfinite(lo) and np.isfinite(hi)):
        if np.isfinite(n_splits) and n_splits >= 2:  # a difference that is the same on every split
            return "none (no spread)" if tex else "(no interval: the same on every split)"
        return "none (one split)" if tex else "(no interval: one split)"
    return f"[{_signed(lo, tex)}, {_signed(hi, tex)}]"


def _p(p: float) -> str:
    return f"{p:.3g}" if np.isfinite(p) else "--"


def table_latex(table: pd.DataFrame, caption: str, header: str) -> str:
    """One row per metric, short column heads (explained in the caption), never wider than the line."""
    from bench.reports.latex import fit_width, minus

    pm = r"$\pm$"
    cols = ["Honest", "Official", "Optimism", "95\\% interval", "$p$ ($t$)"]
    body = [[_pm(r.honest_mean, r.honest_std, pm), _pm(r.official_mean, r.official_std, pm),
             _signed(r.optimism_mean), _interval(r.optimism_ci_low, r.optimism_ci_high, n_splits=r.n_splits), _p(r.p)]
            for r in table.itertuples()]
    tuned = "tuned_mean" in table and np.isfinite(table["tuned_mean"]).any()
    if tuned:
        cols += ["Tuned", "Tuned $-$ honest"]
        for row, r in zip(body, table.itertuples()):
            row += [_pm(r.tuned_mean, r.tuned_std, pm),
                    f"{_signed(r.tuned_gain_mean)} {_interval(r.tuned_gain_ci_low, r.tuned_gain_ci_high, n_splits=r.tuned_n_splits)}"]
    body = [[minus(c) for c in row] for row in body]
    index = pd.Index([m.replace("%", r"\%") for m in table["metric"]])
    # the heading of the row labels sits on the header line (an index name would add a line)
    df = pd.DataFrame(body, index=index, columns=pd.Index(cols, name="Metric"))
    caption += (" Columns: Honest, the final epoch; Official, the best test epoch; Optimism, official $-$ honest "
                "in points, and its 95\\% interval; $p$ ($t$), one-sample $t$-test over splits"
                + ("; Tuned, tuned on validation, and its gain over Honest with a 95\\% $t$-interval over splits."
                   if tuned else "."))
    latex = df.style.to_latex(hrules=True, column_format="l" + "r" * len(cols), caption=caption,
                              label="tab:selection-bias", position="t", position_float="centering")
    return header + fit_width(latex)


def table_markdown(table: pd.DataFrame) -> str:
    head = "| Analysis (not a protocol result) | " + " | ".join(table["metric"]) + " |"
    out = [head, "|" + "---|" * (len(table) + 1)]
    out.append("| Honest (final epoch) | " + " | ".join(_pm(r.honest_mean, r.honest_std, "±") for r in table.itertuples()) + " |")
    out.append("| Official (best test epoch) | " + " | ".join(_pm(r.official_mean, r.official_std, "±") for r in table.itertuples()) + " |")
    out.append("| Optimism [95% CI] | " + " | ".join(
        f"{r.optimism_mean * 100:+.2f} {_interval(r.optimism_ci_low, r.optimism_ci_high, tex=False, n_splits=r.n_splits)}"
        for r in table.itertuples()) + " |")
    out.append("| p (t over splits) | " + " | ".join(_p(r.p) for r in table.itertuples()) + " |")
    for lab, vals in _tuned_lines(table, "±").items():
        out.append(f"| {lab} | " + " | ".join(vals) + " |")
    return "\n".join(out)


def render(traj: pd.DataFrame, out_dir: Path, name: str, method_label: str, setting_label: str, header: str,
           tuned: pd.DataFrame | None = None):
    """Write NAME.tex, NAME-splits.csv and the figure; return (files, markdown, notes)."""
    from bench.reports.figures import plot_selection_bias

    picks, curve, table = summarise(traj)
    picks, table = add_tuned(picks, table, tuned)
    notes = []
    mism = picks[np.isfinite(picks["stored_overall"]) & (np.abs(picks["stored_overall"] - picks["honest"]) > 1e-9)]
    if len(mism):
        notes.append(
            f"on {len(mism)} split(s) the final evaluation here differs from the stored protocol cell "
            f"(max |Δ| = {np.abs(mism['stored_overall'] - mism['honest']).max() * 100:.2f} points): the per-epoch "
            "hook changed the training trajectory (e.g. a shared random stream)")
    S = len(picks)
    caption = (
        f"\\textbf{{Analysis, not a protocol result.}} {method_label} on {setting_label}: accuracy (\\%) under the honest "
        f"protocol (fixed training budget) and under the official code's protocol (the epoch with the best overall "
        f"\\emph{{test}} accuracy among {int(picks['n_epochs'].median()) if S else 0} per-epoch evaluations), mean $\\pm$ std "
        f"over $S={S}$ splits. Optimism: mean over splits of the per-split difference, with a 95\\% Student-$t$ interval "
        f"over splits (the expected optimism on these users; no interval with one split or when it is the same on every split). The official numbers select on the test set and never enter Table 1."
    )
    if "tuned_mean" in table and np.isfinite(table["tuned_mean"]).any():
        caption += (" Tuned on validation: the same method with its configuration chosen, per split, among an equal "
                    "budget of candidates on validation data carved from the seen users' train halves (no test pair), "
                    "then refitted; its gain over the honest number is paired over the splits both have.")
    files = []
    tex = out_dir / f"{name}.tex"
    tex.write_text(table_latex(table, caption, header))
    files.append(tex)
    csv = out_dir / f"{name}-splits.csv"
    picks.to_csv(csv, index=False, float_format="%.6g", lineterminator="\n")
    files.append(csv)
    files += plot_selection_bias(curve, picks, out_dir / name, curve)
    return files, table_markdown(table), notes

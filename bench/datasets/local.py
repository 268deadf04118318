"""Bring your own data: a directory with a pairs table and a feature array.

Layout (see README § "Bring your own data")::

    my-data/
      pairs.parquet | pairs.jsonl | pairs.csv   one row per pairwise judgement
      features.npy | features.safetensors        float16/float32 features
      dataset.yaml                               optional: name, family, split_by, shots, …

Pairs columns: ``user`` (required), ``pair_id`` and ``group`` (optional; default: row number and
``pair_id``), ``chosen``/``rejected`` (integer rows of a (rows × dim) feature matrix) — or omit
them and give features of shape (pairs, 2, dim) holding [chosen, rejected] per pair —,
``split`` (optional ``train``/``test``: the dataset's own halves, ``split_by: source``),
``rm_chosen``/``rm_rejected`` (optional reward-model scores) and, optionally, text:
``prompt`` (a string or a JSON list of chat messages), ``chosen_text``, ``rejected_text``.
Every column, shape and dtype is validated; bad rows are named in the error.
"""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

from bench.data import SPLIT_STYLES, Dataset, Features, _preview, check_messages, load_features
from bench.errors import BenchError, DataError, json_error
from bench.hashing import file_digest, hash_obj

PAIR_FILES = ("pairs.parquet", "pairs.jsonl", "pairs.csv")
FEATURE_FILES = ("features.npy", "features.safetensors")
FLOAT_DTYPES = (np.float16, np.float32, np.float64)
# Every column the format knows; anything else is ignored and listed in the dataset line.
KNOWN_COLUMNS = (
    "user", "pair_id", "group", "chosen", "rejected", "split",
    "rm_chosen", "rm_rejected", "prompt", "chosen_text", "rejected_text",
)
ID_COLUMNS = ("user", "pair_id", "group", "split")
CONFIG_KEYS = ("name", "family", "split_by", "shots", "unseen_shots", "feature_model", "description")
FAMILIES = ("prism", "reddit", "generic")
# Row numbers beyond this cannot index any real feature matrix (and would overflow int64 casts).
MAX_ROW = 2**53


_SOURCES: dict[str, Path] = {}  # file name → path of the pairs files read, for line numbers in messages


def _rows(idx, fname: str) -> str:
    """``rows [4] (file line 6)``: data rows counted from 0 and, for CSV and JSONL, the lines of the
    file they were read from (the header and blank lines counted as an editor counts them)."""
    text = f"rows {_preview(idx)}"
    path = _SOURCES.get(fname)
    if path is None or path.suffix not in (".csv", ".jsonl"):
        return text
    try:
        where = _file_lines(path)
        shown = [where[int(i)] for i in list(idx)[:8]]
    except (OSError, IndexError, ValueError, UnicodeDecodeError):
        return text
    more = ", …" if len(list(idx)) > 8 else ""
    return f"{text} (file line{'s' if len(shown) > 1 else ''} {', '.join(map(str, shown))}{more})"


def _file_lines(path: Path) -> list[int]:
    """The 1-based file line on which each data record of a CSV or JSONL file starts."""
    import csv

    out: list[int] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        if path.suffix == ".jsonl":
            return [i for i, line in enumerate(f, 1) if line.strip()]
        reader = csv.reader(f)
        start = 1
        for n, rec in enumerate(reader):
            if n and any(rec):  # pandas skips the header and blank lines
                out.append(start)
            start = reader.line_num + 1
    return out


def _read_pairs(path: Path) -> pd.DataFrame:
    _SOURCES[path.name] = path
    if path.stat().st_size == 0:
        raise DataError(f"{path.name} is empty (0 bytes)", hint="the file was truncated or never written; write the pairs table again")
    try:
        if path.suffix == ".parquet":
            df = pd.read_parquet(path)
            _check_arrow_text(df, path)
            return df
        if path.suffix == ".jsonl":
            rows = []
            # utf-8-sig: a byte-order mark (as some editors write) is accepted, not a JSON error.
            with open(path, encoding="utf-8-sig") as f:
                for i, line in enumerate(f, 1):
                    if not line.strip():
                        continue
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as e:
                        raise DataError(
                            f"{path.name} line {i}: malformed JSON ({json_error(e)})",
                            hint="the file is truncated or edited; fix or remove that line",
                        ) from None
                    if not isinstance(rec, dict):
                        raise DataError(f"{path.name} line {i}: expected a JSON object, got {type(rec).__name__}", hint="one JSON object per line")
                    if "\\ud" in line.lower():
                        check_unicode(rec, f"{path.name} line {i}")
                    rows.append(rec)
            return pd.DataFrame.from_records(rows)
        # Ids are read as text: "007" and "7" are two users, and a user called "NA" is not missing.
        text_cols = {c: str for c in (*ID_COLUMNS, "prompt", "chosen_text", "rejected_text")}
        return pd.read_csv(path, dtype=text_cols, keep_default_na=False, encoding="utf-8-sig")
    except DataError:
        raise
    except UnicodeDecodeError as e:
        raise DataError(f"{path.name} is not valid UTF-8 ({e.reason} at byte {e.start})", hint="re-encode the file as UTF-8") from None
    except Exception as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}", hint="the file is truncated or not in the stated format") from None


def _check_arrow_text(df: pd.DataFrame, path: Path) -> None:
    """Text columns read from Parquet stay Arrow arrays, which are not checked for valid UTF-8 on
    read; Parquet pages carry no checksum, so a damaged text page would fail only later, inside a
    string operation. Check them here."""
    import pyarrow as pa

    for c in df.columns:
        if df[c].dtype != object and pd.api.types.is_string_dtype(df[c].dtype):
            try:
                pa.array(df[c]).validate(full=True)
            except pa.ArrowInvalid as e:
                raise DataError(
                    f"{path.name}: column {c!r} holds text that is not valid UTF-8 ({e})",
                    hint="the file is damaged or its text was written in another encoding; write the pairs table again",
                ) from None


def check_unicode(obj: Any, where: str) -> None:
    """Refuse strings that are not valid Unicode text (lone UTF-16 surrogates from ``\\ud800``
    escapes): they cannot be encoded, hashed, tokenised or stored."""
    try:
        json.dumps(obj, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as e:
        raise DataError(
            f"{where}: a string holds a lone UTF-16 surrogate ({e.object[e.start:e.end]!r}), which is not valid Unicode",
            hint="the text was cut inside an escaped emoji or written by a broken encoder; fix or remove it",
        ) from None


def _single(directory: Path, names: tuple[str, ...], what: str) -> Path | None:
    found = [directory / f for f in names if (directory / f).exists()]
    if len(found) > 1:
        raise DataError(
            f"{directory} holds several {what} ({', '.join(f.name for f in found)})",
            hint=f"keep exactly one of {', '.join(names)}",
        )
    return found[0] if found else None


def _read_config(directory: Path) -> dict[str, Any]:
    path = directory / "dataset.yaml"
    if not path.exists():
        return {}
    try:
        cfg = yaml.safe_load(path.read_bytes().decode("utf-8")) or {}
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start})", hint="re-encode the file as UTF-8") from None
    except yaml.YAMLError as e:
        raise DataError(f"{path} is not valid YAML: {e}", hint="plain keys and values only (no tags)") from None
    if not isinstance(cfg, dict):
        raise DataError(f"{path} must be a mapping of keys to values, got {type(cfg).__name__}", hint=f"keys: {', '.join(CONFIG_KEYS)}")
    for key in cfg:
        if key not in CONFIG_KEYS:
            close = difflib.get_close_matches(str(key), CONFIG_KEYS, n=1, cutoff=0.6)
            raise DataError(
                f"{path}: unknown key {key!r}" + (f"; did you mean '{close[0]}'?" if close else ""),
                hint=f"valid keys: {', '.join(CONFIG_KEYS)}",
            )
    for key in ("name", "feature_model", "description"):
        if key in cfg and (isinstance(cfg[key], bool) or not isinstance(cfg[key], (str, int))):
            raise DataError(f"{path}: {key} must be a string, got {cfg[key]!r}", hint=f"write {key}: some-text")
    if "name" in cfg and not str(cfg["name"]).strip():
        raise DataError(f"{path}: name is empty", hint="give the dataset a name, or leave the key out (the directory name)")
    if "family" in cfg and cfg["family"] not in FAMILIES:
        close = difflib.get_close_matches(str(cfg["family"]), FAMILIES, n=1, cutoff=0.5)
        raise DataError(
            f"{path}: family {cfg['family']!r} is not one of {', '.join(FAMILIES)}" + (f"; did you mean '{close[0]}'?" if close else ""),
            hint="the family picks each method's official hyperparameters (configs/methods/*.yaml)",
        )
    if "split_by" in cfg and cfg["split_by"] not in SPLIT_STYLES:
        raise DataError(f"{path}: split_by {cfg['split_by']!r} is not one of {', '.join(SPLIT_STYLES)}", hint="group: halves by group; source: the 'split' column's halves")
    from bench.budgets import parse_budget

    for key, zero in (("shots", False), ("unseen_shots", True)):
        if key in cfg:
            if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float, str)) or cfg[key] is None:
                raise DataError(f"{path}: {key} must be a positive integer or 'all', got {cfg[key]!r}", hint="a positive integer or 'all'")
            try:
                parse_budget(cfg[key], f"{path.name}: {key}", allow_zero=zero)
            except BenchError as e:
                raise DataError(e.message, hint="a positive integer or 'all'") from None
    return cfg


def _check_both_halves(users: np.ndarray, halves: np.ndarray, file_name: str) -> None:
    """With the dataset's own halves, some user must have pairs in both: else nothing can be scored."""
    counts = {h: int((halves == h).sum()) for h in ("train", "test")}
    for half, n in counts.items():
        if n == 0:
            other = "test" if half == "train" else "train"
            raise DataError(
                f"{file_name}: no pair is in the {half} half ('split' is {other} in every row), so nothing "
                + ("can be scored" if half == "test" else "can be learned"),
                hint=f"mark each user's held-out pairs split={'test' if half == 'test' else 'train'}, or drop the "
                "'split' column to halve every user's pairs by group",
            )
    both = np.intersect1d(users[halves == "train"], users[halves == "test"])
    if len(both) == 0:
        raise DataError(
            f"{file_name}: no user has pairs in both halves (train and test), so no user can be scored",
            hint="give each user train and test pairs, or drop the 'split' column to halve every user's pairs by group",
        )


def _id_column(df: pd.DataFrame, col: str, fname: str) -> pd.Series:
    """An id column as strings; nulls, blanks, non-scalar or float values and ids that collide
    once written as text (``1`` and ``"1"``) stop the load."""
    s = df[col]
    nulls = np.flatnonzero(s.isna().to_numpy())
    if len(nulls):
        raise DataError(f"{fname}: '{col}' is empty (null) in {_rows(nulls, fname)}", hint=f"give every row a {col}, or drop the column")
    if pd.api.types.is_bool_dtype(s) or pd.api.types.is_float_dtype(s):
        raise DataError(f"{fname}: '{col}' holds {s.dtype} values", hint=f"store {col} ids as strings or integers")
    if s.dtype == object:
        kinds = s.map(lambda v: "str" if isinstance(v, str) else "int" if isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) else type(v).__name__)
        bad = np.flatnonzero(~kinds.isin(["str", "int"]).to_numpy())
        if len(bad):
            raise DataError(
                f"{fname}: '{col}' must hold strings or integers; {_rows(bad, fname)} hold {sorted(set(kinds.iloc[bad]))}",
                hint=f"store {col} ids as strings",
            )
        out = s.astype(str)
        if kinds.nunique() > 1:
            both = pd.DataFrame({"kind": kinds, "text": out}).groupby("text")["kind"].nunique()
            clash = both.index[both.to_numpy() > 1]
            if len(clash):
                raise DataError(
                    f"{fname}: '{col}' ids {_preview(clash)} appear both as numbers and as strings and would merge",
                    hint=f"store every {col} id as a string",
                )
    else:
        out = s.astype(str)
    blank = np.flatnonzero((out.str.strip() == "").to_numpy())
    if len(blank):
        raise DataError(f"{fname}: '{col}' is blank in {_rows(blank, fname)}", hint=f"give every row a non-empty {col}")
    return out.reset_index(drop=True)


def _index_column(df: pd.DataFrame, col: str, fname: str) -> np.ndarray:
    s = df[col]
    isbool = s.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy() if s.dtype == object else np.full(len(s), pd.api.types.is_bool_dtype(s))
    v = pd.to_numeric(s.where(~isbool, np.nan), errors="coerce").to_numpy(dtype=np.float64)
    with np.errstate(invalid="ignore"):
        bad = np.flatnonzero(~np.isfinite(v) | (v % 1 != 0) | (np.abs(v) > MAX_ROW))
    if len(bad):
        raise DataError(
            f"{fname}: '{col}' must be integer row numbers of the feature matrix; bad in {_rows(bad, fname)}",
            hint="write plain non-negative integers (not floats with fractions, booleans, text or nulls)",
        )
    return v.astype(np.int64)


def _check_feature_array(arr: np.ndarray, fname: str) -> None:
    if arr.dtype.type not in FLOAT_DTYPES:
        raise DataError(f"{fname}: dtype {arr.dtype} is not a float type", hint="store float16 or float32")
    if not arr.dtype.isnative:
        raise DataError(
            f"{fname}: dtype {arr.dtype.str} is not in this machine's byte order",
            hint="re-save it little-endian, e.g. np.save(path, arr.astype('<f2'))",
        )
    if arr.ndim not in (2, 3):
        raise DataError(f"{fname} has shape {arr.shape}; it must be (rows, dim) or (pairs, 2, dim)", hint="save a 2-D matrix indexed by chosen/rejected, or one [chosen, rejected] pair of vectors per row")
    if arr.shape[-1] == 0 or arr.shape[0] == 0:
        raise DataError(f"{fname} has shape {arr.shape}: no rows or no feature dimensions", hint="write the features again")


def _scan_rows(features: Features, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One chunked pass over the used rows: (rows with NaN/Inf, float64 rows beyond float32's range,
    float64 rows with nonzero values below float32's smallest subnormal (read as 0), a per-row
    fingerprint of the float32 values aligned with ``rows`` to find identical rows cheaply)."""
    rows = np.unique(rows)
    # The fingerprint reads 32 fixed random columns only: identical rows agree on them, and the
    # few other rows that do are weeded out by the exact comparison afterwards.
    rng = np.random.default_rng(0)
    cols = np.sort(rng.choice(features.dim, size=min(features.dim, 32), replace=False))
    probe = rng.standard_normal(len(cols)).astype(np.float32)
    info = np.finfo(np.float32)
    nonfinite, over, under, fp = [], [], [], np.empty(len(rows))
    for start in range(0, len(rows), features.chunk_rows):
        idx = rows[start : start + features.chunk_rows]
        block = np.asarray(features.array[idx])
        ok = np.isfinite(block).all(axis=1)
        nonfinite.append(idx[~ok])
        if block.dtype == np.float64:
            with np.errstate(invalid="ignore"):
                a = np.abs(block)
                over.append(idx[ok & (a > info.max).any(axis=1)])
                under.append(idx[ok & ((a > 0) & (a < info.smallest_subnormal)).any(axis=1)])
        with np.errstate(all="ignore"):
            fp[start : start + len(idx)] = np.where(ok, block[:, cols].astype(np.float32) @ probe, np.nan)
    cat = lambda xs: np.concatenate(xs) if xs else np.empty(0, dtype=np.int64)  # noqa: E731
    return cat(nonfinite), cat(over), cat(under), fp


def _identical_feature_pairs(features: Features, rows: np.ndarray, fp: np.ndarray, chosen: np.ndarray, rejected: np.ndarray) -> int:
    """Pairs whose two feature vectors are equal (fingerprints first, then an exact check)."""
    where = np.searchsorted(rows, chosen), np.searchsorted(rows, rejected)
    cand = np.flatnonzero(fp[where[0]] == fp[where[1]])
    if len(cand) == 0:
        return 0
    n = 0
    for start in range(0, len(cand), features.chunk_rows):
        c = cand[start : start + features.chunk_rows]
        # What methods see: float32 values.
        a = np.asarray(features.array[chosen[c]]).astype(np.float32)
        n += int((a == np.asarray(features.array[rejected[c]]).astype(np.float32)).all(axis=1).sum())
    return n


def load_directory(directory: Path) -> Dataset:
    directory = Path(directory)
    if not directory.exists():
        raise DataError(f"dataset directory not found: {directory}", hint="pass a directory holding pairs.parquet|jsonl|csv (README § Bring your own data)")
    if not directory.is_dir():
        raise DataError(f"{directory} is a file, not a dataset directory", hint="pass the directory that holds it")
    pair_file = _single(directory, PAIR_FILES, "pairs tables")
    feat_file = _single(directory, FEATURE_FILES, "feature files")
    if pair_file is None:
        raise DataError(f"{directory} has no pairs table", hint=f"add one of {', '.join(PAIR_FILES)}")
    cfg = _read_config(directory)
    name = str(cfg.get("name", directory.name))
    df = _read_pairs(pair_file)
    n = len(df)
    if n == 0:
        raise DataError(f"{pair_file.name} has no rows", hint="write at least one pair per user")
    df.columns = [str(c) for c in df.columns]
    cols = set(df.columns)
    ignored = sorted(cols - set(KNOWN_COLUMNS))
    for c in ignored:
        close = difflib.get_close_matches(c.lower(), [k for k in KNOWN_COLUMNS if k not in cols], n=1, cutoff=0.75)
        if close:
            raise DataError(
                f"{pair_file.name}: unknown column '{c}'; did you mean '{close[0]}'?",
                hint=f"rename it (the known columns: {', '.join(KNOWN_COLUMNS)})",
            )
    if "user" not in cols:
        raise DataError(f"{pair_file.name}: missing required column 'user'", hint="one user id per pair")
    for group_cols in (("chosen", "rejected"), ("rm_chosen", "rm_rejected"), ("prompt", "chosen_text", "rejected_text")):
        have = [c for c in group_cols if c in cols]
        if have and len(have) < len(group_cols):
            raise DataError(
                f"{pair_file.name} has {', '.join(repr(c) for c in have)} but not {', '.join(repr(c) for c in group_cols if c not in cols)}",
                hint=f"these columns go together: {', '.join(group_cols)}",
            )
    df = df.reset_index(drop=True)
    user = _id_column(df, "user", pair_file.name)
    if "pair_id" in cols:
        pair_id = _id_column(df, "pair_id", pair_file.name)
        dup = pair_id.duplicated(keep=False).to_numpy()
        if dup.any():
            raise DataError(
                f"{pair_file.name}: duplicate pair_id values {_preview(pair_id[dup].unique())} (rows {_preview(np.flatnonzero(dup))})",
                hint="every pair needs a unique pair_id",
            )
    else:
        pair_id = pd.Series([str(i) for i in range(n)])
    group = _id_column(df, "group", pair_file.name) if "group" in cols else pair_id
    # Groups are namespaced by user so that equal ids of two users never merge.
    group = user + "::" + group

    features = None
    arr = load_features(feat_file) if feat_file is not None else None
    if arr is not None:
        _check_feature_array(arr, feat_file.name)
    has_idx = "chosen" in cols
    if has_idx:
        chosen = _index_column(df, "chosen", pair_file.name)
        rejected = _index_column(df, "rejected", pair_file.name)
        if arr is not None and arr.ndim != 2:
            raise DataError(
                f"{feat_file.name} has shape {arr.shape}; with chosen/rejected columns it must be (rows, dim)",
                hint="or drop the chosen/rejected columns and keep features of shape (pairs, 2, dim)",
            )
        n_rows = int(max(chosen.max(), rejected.max()) + 1) if arr is None else arr.shape[0]
    else:
        if arr is None:
            raise DataError(
                f"{pair_file.name} has no chosen/rejected columns and there is no feature file",
                hint="give chosen/rejected row numbers, or features of shape (pairs, 2, dim)",
            )
        if arr.ndim != 3 or arr.shape[0] != n or arr.shape[1] != 2:
            raise DataError(
                f"{feat_file.name} has shape {arr.shape}; without chosen/rejected columns it must be ({n}, 2, dim)",
                hint="one [chosen, rejected] feature pair per row of the pairs table",
            )
        arr = arr.reshape(2 * n, arr.shape[2])
        chosen = 2 * np.arange(n, dtype=np.int64)
        rejected = chosen + 1
        n_rows = 2 * n
    for col, v in (("chosen", chosen), ("rejected", rejected)):
        bad = np.flatnonzero((v < 0) | (v >= n_rows))
        if len(bad):
            raise DataError(
                f"{pair_file.name}: '{col}' out of range [0, {n_rows}) in {_rows(bad, pair_file.name)}",
                hint="chosen/rejected must index rows of the feature matrix",
            )
    same = np.flatnonzero(chosen == rejected)
    if len(same):
        raise DataError(f"{pair_file.name}: chosen == rejected in {_rows(same, pair_file.name)}", hint="a pair compares two different responses")
    # A judgement repeated verbatim (same user, same chosen and rejected rows) is kept once: two
    # copies could land on both sides of the split and reward memorisation.
    dropped: dict[str, int] = {}
    key = pd.DataFrame({"u": user.to_numpy(), "c": chosen, "r": rejected})
    repeat = key.duplicated(keep="first").to_numpy() if has_idx else np.zeros(n, dtype=bool)
    if repeat.any():
        dropped["judgements repeated verbatim (same user, chosen and rejected row; kept once)"] = int(repeat.sum())
    keep = ~repeat

    if arr is not None:
        features = Features(arr)
        used = np.unique(np.r_[chosen, rejected])
        nonfinite, over, under, fingerprint = _scan_rows(features, used)
        for bad_rows, what, fix in (
            (nonfinite, "NaN/Inf features", "re-extract those features or drop those pairs"),
            (over, "float64 features beyond float32's range (they would become Inf)", "rescale the features or drop those pairs"),
        ):
            if len(bad_rows):
                bad_pairs = np.flatnonzero(np.isin(chosen, bad_rows) | np.isin(rejected, bad_rows))
                raise DataError(f"{feat_file.name}: {what} in rows {_preview(bad_rows)} used by pairs {_preview(bad_pairs)}", hint=fix)

    notes: dict[str, int] = {}
    if features is not None and len(under):
        notes["feature rows with float64 values below float32's smallest subnormal (read as 0)"] = int(len(under))
    if features is not None:
        tie = _identical_feature_pairs(features, used, fingerprint, chosen[keep], rejected[keep])
        if tie:
            notes["pairs whose chosen and rejected features are identical (feature-based methods tie on them; a tie counts as wrong)"] = tie

    split_by = cfg.get("split_by")
    if "split" in cols:
        raw = _id_column(df, "split", pair_file.name)
        source = raw.str.strip().str.lower().replace({"validation": "test", "valid": "test", "val": "test"})
        unknown = np.flatnonzero(~source.isin(["train", "test"]).to_numpy())
        if len(unknown):
            raise DataError(
                f"{pair_file.name}: 'split' values {_preview(sorted(set(raw.iloc[unknown])))} in {_rows(unknown, pair_file.name)} are not train/test/validation",
                hint="split is the dataset's own halves: train, or test/validation",
            )
        split_by = split_by or "source"
    else:
        source = pd.Series([""] * n)
        split_by = split_by or "group"
        if split_by == "source":
            raise DataError(f"{directory}/dataset.yaml says split_by: source but {pair_file.name} has no 'split' column", hint="add a 'split' column (train/test) or use split_by: group")

    if split_by == "source":
        _check_both_halves(user.to_numpy()[keep], source.to_numpy()[keep], pair_file.name)

    responses = pd.DataFrame({"prompt_id": np.zeros(n_rows, dtype=np.int64)})
    if "rm_chosen" in cols:
        rm = np.full(n_rows, np.nan)
        rc = _score_column(df, "rm_chosen", pair_file.name)
        rr = _score_column(df, "rm_rejected", pair_file.name)
        tie32 = int((rc.astype(np.float32) == rr.astype(np.float32))[keep].sum())
        if tie32:
            notes["pairs whose rm_chosen and rm_rejected are equal in float32 (the rm baseline ties on them; a tie counts as wrong)"] = tie32
        rm[chosen] = rc
        rm[rejected] = rr
        conflict = np.flatnonzero((rm[chosen] != rc) | (rm[rejected] != rr))
        if len(conflict):
            raise DataError(f"{pair_file.name}: one feature row gets different rm scores (pairs {_preview(conflict)})", hint="a response row has one reward-model score; give equal scores or separate rows")
        responses["rm_score"] = np.nan_to_num(rm, nan=0.0)

    prompts = None
    if "prompt" in cols:
        prompts, responses = _text_columns(df, chosen, rejected, responses, pair_file.name)

    pairs = pd.DataFrame(
        {
            "user": user.to_numpy()[keep],
            "group": group.to_numpy()[keep],
            "pair_id": pair_id.to_numpy()[keep],
            "chosen": chosen[keep],
            "rejected": rejected[keep],
            "source_split": source.to_numpy()[keep],
        }
    )
    fp = hash_obj(
        {
            "byo": 1,
            "pairs": file_digest(pair_file),
            "features": None if feat_file is None else file_digest(feat_file),
            "config": cfg,
        },
        size=12,
    )
    ds = Dataset(
        name=name,
        pairs=pairs,
        responses=responses,
        prompts=prompts,
        features=features,
        split_by=split_by,
        family=str(cfg.get("family", "generic")),
        fingerprint=fp,
        defaults={k: cfg[k] for k in ("shots", "unseen_shots") if k in cfg},
        meta={
            "source": str(directory),
            "description": str(cfg.get("description", "")),
            "feature_model": str(cfg.get("feature_model", "unknown" if features is not None else "none")),
            "rows_read": n,
            "dropped": dropped,
            "notes": notes,
            "ignored_columns": ignored,
        },
    )
    return ds.validate()


def _score_column(df: pd.DataFrame, col: str, fname: str) -> np.ndarray:
    s = df[col]
    isbool = s.map(lambda v: isinstance(v, (bool, np.bool_))).to_numpy() if s.dtype == object else np.full(len(s), pd.api.types.is_bool_dtype(s))
    v = pd.to_numeric(s.where(~isbool, np.nan), errors="coerce").to_numpy(dtype=np.float64)
    bad = np.flatnonzero(~np.isfinite(v))
    if len(bad):
        raise DataError(
            f"{fname}: '{col}' is NaN, Inf, empty or not a number in {_rows(bad, fname)}",
            hint="reward-model scores must be finite numbers; drop those pairs or recompute the scores",
        )
    # Scores are compared in float32 (Dataset.rm_score): beyond its range they would become Inf.
    over = np.flatnonzero(np.abs(v) > np.finfo(np.float32).max)
    if len(over):
        raise DataError(f"{fname}: '{col}' beyond float32's range (it would become Inf) in {_rows(over, fname)}", hint="rescale the reward-model scores")
    return v


def _text_columns(df, chosen, rejected, responses, fname):
    prompts: dict[str, list[dict[str, str]]] = {}
    prompt_of_row = np.full(len(responses), -1, dtype=np.int64)
    text_of_row: list[Any] = [None] * len(responses)
    key_to_id: dict[str, int] = {}
    for i, (p, ct, rt) in enumerate(zip(df["prompt"], df["chosen_text"], df["rejected_text"])):
        if isinstance(p, str) and p.lstrip().startswith("["):
            try:
                msgs = json.loads(p)
            except json.JSONDecodeError:
                msgs = [{"role": "user", "content": p}]
        elif isinstance(p, str):
            msgs = [{"role": "user", "content": p}]
        elif isinstance(p, (list, np.ndarray)):
            msgs = list(p)
        else:
            raise DataError(f"{fname} row {i}: 'prompt' must be a string or a list of messages, got {type(p).__name__}", hint='write the prompt as text or as a JSON list of {"role", "content"} messages')
        check_messages(msgs, where=f"{fname} row {i}")
        for t, col in ((ct, "chosen_text"), (rt, "rejected_text")):
            if not isinstance(t, str):
                raise DataError(f"{fname} row {i}: '{col}' must be a string, got {type(t).__name__}", hint="every pair needs both response texts")
        key = json.dumps(msgs, sort_keys=True)
        pid = key_to_id.setdefault(key, len(key_to_id))
        prompts[str(pid)] = msgs
        for row, t in ((chosen[i], ct), (rejected[i], rt)):
            if text_of_row[row] is not None and (text_of_row[row] != t or prompt_of_row[row] != pid):
                raise DataError(f"{fname} row {i}: feature row {row} is shared by different texts", hint="one feature row per distinct (prompt, response) text")
            text_of_row[row] = t
            prompt_of_row[row] = pid
    responses = responses.copy()
    responses["prompt_id"] = prompt_of_row
    responses["text"] = text_of_row
    return prompts, responses

"""Hostile inputs for the bring-your-own-data format (bench/datasets/local.py): pairs tables,
feature arrays and dataset.yaml.

Every case ends in a clear error (a BenchError with a message naming the problem and a hint
naming the fix) or is accepted with its effect checked (a counted skip, a note, or the exact
values) — never another exception, never a silently wrong number. Property-based tests
(hypothesis) generate tables and arrays that are either rejected with a DataError or accepted,
and then the engine's accuracy must equal an independent recomputation from the raw input. A
representative subset goes through the real CLI in a subprocess: exit code ≠ 0, a message, no
traceback. The table in docs/reliability.md § "Bad inputs" is printed by ``python -m tests.hostile``.
"""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from bench.datasets.local import load_directory
from bench.errors import DataError
from tests.hostile import Case, Load, assert_clear_error, byo, feature_matrix, pairs_table, rewrite, write_features, write_pairs

P = pairs_table  # 3 users × 4 pairs, chosen/rejected rows 0..23
# Examples per property. The default run (CI's) draws the same 100 examples every time, so a
# red CI names a change, not a lucky draw; HOSTILE_EXAMPLES=N (e.g. 2000) searches N fresh random
# examples instead — run it when touching a loader, and turn what it finds into a fixed case.
EXAMPLES = int(os.environ.get("HOSTILE_EXAMPLES", "100"))
FIXED = "HOSTILE_EXAMPLES" not in os.environ
HYP = settings(
    max_examples=EXAMPLES, deadline=None, database=None, derandomize=FIXED,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Unicode edge cases: NUL, RTL override, combining mark, emoji with ZWJ and skin tone, BOM inside,
# a surrogate pair written escaped in JSON (valid), CJK, a C1 control and U+FFFF.
WEIRD = "a\x00b \u202eRTL\u202c e\u0301 \U0001f469\u200d\U0001f4bb\U0001f44d\U0001f3fd \ufeff 漢字 \x85 \uffff"


# ---------------------------------------------------------------------------- checks of accepted inputs


def _same_as_clean(ds, d):
    clean = load_directory(byo(d.parent / "clean"))
    assert ds.pairs[["user", "pair_id", "chosen", "rejected"]].equals(clean.pairs[["user", "pair_id", "chosen", "rejected"]])


def _users(*names):
    def check(ds, d):
        assert sorted(ds.pairs["user"].unique()) == sorted(names)

    return check


def _dropped(key, n, pairs):
    def check(ds, d):
        assert ds.meta["dropped"] == {key: n} and len(ds.pairs) == pairs
        assert ds.summary()["dropped"] == {key: n}

    return check


def _noted(fragment, n):
    def check(ds, d):
        hits = {k: v for k, v in ds.meta["notes"].items() if fragment in k}
        assert list(hits.values()) == [n], ds.meta["notes"]

    return check


def _features_exact(raw):
    def check(ds, d):
        rows = np.unique(np.r_[ds.pairs["chosen"], ds.pairs["rejected"]])
        np.testing.assert_array_equal(ds.features.take(rows), raw[rows].astype(np.float32))

    return check


def _texts_round_trip(prompt, chosen):
    def check(ds, d):
        assert ds.messages(int(ds.pairs["chosen"].iloc[0])) == [{"role": "user", "content": prompt}, {"role": "assistant", "content": chosen}]

    return check


def _ignored(*cols):
    def check(ds, d):
        assert ds.meta["ignored_columns"] == list(cols)
        from bench.runner import describe_dataset

        assert "ignored columns " + ", ".join(cols) in describe_dataset(ds)

    return check


# ---------------------------------------------------------------------------- builders


def _with(**cols):
    p = P()
    for k, v in cols.items():
        p[k] = v
    return p


def _set(col, idx, value, base=None):
    p = (base if base is not None else P()).copy()
    p[col] = p[col].astype(object)
    for i in np.atleast_1d(idx):
        p.at[int(i), col] = value
    return p


def _jsonl_rows(fn):
    recs = P().to_dict("records")
    for i, r in enumerate(recs):
        fn(i, r)
    return recs


def _raw_jsonl(d, text, feats=True):
    d.mkdir(parents=True, exist_ok=True)
    (d / "pairs.jsonl").write_text(text, encoding="utf-8")
    if feats:
        write_features(d, feature_matrix(24))


def _text_pairs(prompt="hi", n=12, chosen=None, rejected=None):
    p = P()
    p["prompt"] = [prompt] * n
    p["chosen_text"] = chosen or [f"c{i}" for i in range(n)]
    p["rejected_text"] = rejected or [f"r{i}" for i in range(n)]
    return p


def _safetensors_raw(d, header: dict, payload: bytes):
    byo(d, no_features=True)
    h = json.dumps(header).encode()
    (d / "features.safetensors").write_bytes(struct.pack("<Q", len(h)) + h + payload)


def _feats_with(rows_values, dtype=np.float32, rows=24):
    f = feature_matrix(rows, dtype=dtype)
    for (r, c), v in rows_values.items():
        f[r, c] = v
    return f


def _parquet_bad_utf8(d: Path) -> None:
    """Rewrite pairs.parquet with one user id of invalid UTF-8 bytes (Parquet pages carry no
    checksum: a flipped byte in a text page reads like this)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    t = pq.read_table(d / "pairs.parquet")
    users = [u.encode() for u in t.column("user").to_pylist()]
    users[3] = b"u\xff\xfe"
    bad = pa.array(users, pa.binary()).view(pa.string())
    pq.write_table(t.set_column(t.schema.get_field_index("user"), "user", bad), d / "pairs.parquet")


def _dup_judgement():
    p = P()
    p.loc[1, ["chosen", "rejected"]] = p.loc[0, ["chosen", "rejected"]].to_numpy()
    return p


def _cross_user_same_rows():
    p = P()
    p.loc[4, ["chosen", "rejected"]] = p.loc[0, ["chosen", "rejected"]].to_numpy()  # u1 judges u0's pair
    return p


def _reversed_pair():
    p = P()
    p.loc[1, ["chosen", "rejected"]] = p.loc[0, ["rejected", "chosen"]].to_numpy()
    return p


def _group_spans_splits():
    p = P()
    p["split"] = ["train", "test"] * 6  # group g0 of u0 = rows 0, 1 → both halves
    return p


def _rm_conflict():
    p = pairs_table(rm=True)
    p.loc[1, "chosen"] = p.loc[0, "chosen"]  # row 0 scored twice, differently
    return p


def _rm_tie32():
    p = pairs_table(rm=True)
    p.loc[0, ["rm_chosen", "rm_rejected"]] = [1.0, 1.0 + 1e-12]  # differ in float64, equal in float32
    return p


def _mixed_split_case():
    p = P()
    p["split"] = ["TRAIN", "Validation", " train ", "test"] * 3
    p["group"] = [f"g{i}" for i in range(12)]
    return p


# ---------------------------------------------------------------------------- the cases

FILE_CASES = [
    Case("empty-dir", "empty directory", lambda d: d.mkdir(), r"has no pairs table"),
    Case("missing-dir", "directory that does not exist", lambda d: Load(d / "nowhere"), r"dataset directory not found"),
    Case("dir-is-file", "a file given instead of the directory", lambda d: Load(byo(d) / "pairs.parquet"), r"is a file, not a dataset directory"),
    Case("only-features", "features but no pairs table", lambda d: write_features(d, feature_matrix(24)), r"has no pairs table"),
    Case("two-pair-tables", "pairs.parquet and pairs.csv side by side", lambda d: (byo(d), write_pairs(d, P().iloc[:4], "csv")), r"several pairs tables"),
    Case("two-feature-files", "features.npy and features.safetensors side by side", lambda d: (byo(d), write_features(d, feature_matrix(24), "safetensors")), r"several feature files"),
    Case("no-index-no-features", "no chosen/rejected columns and no feature file", lambda d: byo(d, P().drop(columns=["chosen", "rejected"]), no_features=True), r"no chosen/rejected columns and there is no feature file"),
    # parquet
    Case("parquet-0-bytes", "pairs.parquet of 0 bytes", lambda d: (byo(d), (d / "pairs.parquet").write_bytes(b"")), r"pairs.parquet is empty \(0 bytes\)"),
    Case("parquet-truncated", "pairs.parquet cut in half", lambda d: (byo(d), rewrite(d / "pairs.parquet", lambda b: b[: len(b) // 2])), r"cannot read .*pairs.parquet"),
    Case("parquet-garbage", "pairs.parquet of random bytes between PAR1 magics", lambda d: (byo(d), (d / "pairs.parquet").write_bytes(b"PAR1" + os.urandom(300) + b"PAR1")), r"cannot read .*pairs.parquet"),
    Case("parquet-is-json", "JSON lines saved under the name pairs.parquet", lambda d: (byo(d, fmt="jsonl"), (d / "pairs.jsonl").rename(d / "pairs.parquet")), r"cannot read .*pairs.parquet"),
    Case("parquet-bad-utf8", "pairs.parquet whose user column holds bytes that are not UTF-8 (a damaged text page)", lambda d: _parquet_bad_utf8(byo(d)), r"pairs.parquet: column 'user' holds text that is not valid UTF-8"),
    Case("parquet-zero-rows", "pairs.parquet with the columns but no rows", lambda d: byo(d, P().iloc[:0]), r"has no rows"),
    # jsonl
    Case("jsonl-0-bytes", "pairs.jsonl of 0 bytes", lambda d: _raw_jsonl(d, ""), r"pairs.jsonl is empty \(0 bytes\)"),
    Case("jsonl-blank-lines", "pairs.jsonl holding only blank lines", lambda d: _raw_jsonl(d, "\n \n\t\n"), r"has no rows"),
    Case("jsonl-truncated", "pairs.jsonl cut inside its last line", lambda d: (byo(d, fmt="jsonl"), rewrite(d / "pairs.jsonl", lambda b: b[:-12])), r"line 12: malformed JSON"),
    Case("jsonl-not-object", "a JSON array on a line", lambda d: _raw_jsonl(d, '{"user": "a", "chosen": 0, "rejected": 1}\n[1, 2]\n'), r"line 2: expected a JSON object, got list"),
    Case("jsonl-latin1", "Latin-1 bytes (é as 0xE9) in pairs.jsonl", lambda d: (byo(d, _set("user", 3, "café"), fmt="jsonl"), rewrite(d / "pairs.jsonl", lambda b: b.replace("caf\\u00e9".encode(), "café".encode("latin-1")))), r"not valid UTF-8"),
    Case("jsonl-utf16", "pairs.jsonl encoded as UTF-16", lambda d: (byo(d, fmt="jsonl"), rewrite(d / "pairs.jsonl", lambda b: b.decode().encode("utf-16"))), r"not valid UTF-8"),
    Case("jsonl-bom", "UTF-8 byte-order mark at the start of pairs.jsonl", lambda d: (byo(d, fmt="jsonl"), rewrite(d / "pairs.jsonl", lambda b: b"\xef\xbb\xbf" + b)), None, "accepted, identical to the file without BOM", _same_as_clean),
    Case("jsonl-crlf", "Windows line endings (CRLF) in pairs.jsonl", lambda d: (byo(d, fmt="jsonl"), rewrite(d / "pairs.jsonl", lambda b: b.replace(b"\n", b"\r\n"))), None, "accepted, identical to LF", _same_as_clean),
    Case("jsonl-lone-surrogate", 'a lone UTF-16 surrogate escape ("\\ud800") in a user id', lambda d: _raw_jsonl(d, '{"user": "u\\ud800", "chosen": 0, "rejected": 1}\n'), r"line 1: a string holds a lone UTF-16 surrogate"),
    Case("jsonl-surrogate-pair", 'an emoji written as an escaped surrogate pair ("\\ud83d\\ude00") in a user id', lambda d: _raw_jsonl(d, '{"user": "\\ud83d\\ude00", "chosen": 0, "rejected": 1}\n{"user": "b", "chosen": 2, "rejected": 3}\n'), None, "accepted: the user id is 😀", _users("\U0001f600", "b")),
    Case("jsonl-nan-index", "JSON NaN literal as a chosen row", lambda d: _raw_jsonl(d, '{"user": "a", "chosen": NaN, "rejected": 1}\n'), r"'chosen' must be integer row numbers"),
    Case("jsonl-missing-key", "some lines lack the 'user' key", lambda d: byo(d, _jsonl_rows(lambda i, r: r.pop("user") if i == 5 else None), fmt="jsonl"), r"'user' is empty \(null\) in rows \[5\]"),
    Case("jsonl-extra-key", "some lines carry an extra key ('annotator_note')", lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(annotator_note="x") if i < 3 else None), fmt="jsonl"), None, "accepted; the column is ignored and named in the dataset line", _ignored("annotator_note")),
    # csv
    Case("csv-0-bytes", "pairs.csv of 0 bytes", lambda d: (byo(d, fmt="csv"), (d / "pairs.csv").write_bytes(b"")), r"pairs.csv is empty"),
    Case("csv-header-only", "pairs.csv with a header and no rows", lambda d: (byo(d, fmt="csv"), (d / "pairs.csv").write_text("user,chosen,rejected\n")), r"has no rows"),
    Case("csv-latin1", "Latin-1 bytes in pairs.csv", lambda d: (byo(d, _set("user", 3, "café"), fmt="csv"), rewrite(d / "pairs.csv", lambda b: b.replace("café".encode(), "café".encode("latin-1")))), r"not valid UTF-8"),
    Case("csv-bom", "UTF-8 byte-order mark at the start of pairs.csv", lambda d: (byo(d, fmt="csv"), rewrite(d / "pairs.csv", lambda b: b"\xef\xbb\xbf" + b)), None, "accepted, identical to the file without BOM", _same_as_clean),
    Case("csv-ragged", "a pairs.csv row with more fields than the header", lambda d: (byo(d, fmt="csv"), rewrite(d / "pairs.csv", lambda b: b + b"u9,p99,g,1,2,3,4\n")), r"cannot read .*pairs.csv: ParserError"),
    Case("csv-leading-zeros", 'user ids "007" and "7" in pairs.csv', lambda d: byo(d, _with(user=["007", "7", "7", "007"] * 3), fmt="csv"), None, "accepted: two users (ids are read as text, not numbers)", _users("007", "7")),
    Case("csv-user-NA", 'a user called "NA" in pairs.csv', lambda d: byo(d, _set("user", [0, 1, 2, 3], "NA"), fmt="csv"), None, 'accepted: "NA" is an id, not a missing value', _users("NA", "u1", "u2")),
    Case("csv-empty-cell", "an empty user cell in pairs.csv", lambda d: byo(d, _set("user", 2, ""), fmt="csv"), r"'user' is blank in rows \[2\]"),
]

COLUMN_CASES = [
    Case("no-user-column", "no 'user' column", lambda d: byo(d, P().drop(columns=["user"])), r"missing required column 'user'"),
    Case("typo-column", "a misspelt column 'grup'", lambda d: byo(d, P().rename(columns={"group": "grup"})), r"unknown column 'grup'; did you mean 'group'"),
    Case("case-column", "a column 'User' instead of 'user'", lambda d: byo(d, P().rename(columns={"user": "User"})), r"unknown column 'User'; did you mean 'user'"),
    Case("extra-column", "an unrelated extra column ('annotator')", lambda d: byo(d, _with(annotator="x")), None, "accepted; ignored and named in the dataset line", _ignored("annotator")),
    Case("only-chosen", "'chosen' without 'rejected'", lambda d: byo(d, P().drop(columns=["rejected"])), r"has 'chosen' but not 'rejected'"),
    Case("only-rm-chosen", "'rm_chosen' without 'rm_rejected'", lambda d: byo(d, _with(rm_chosen=1.0)), r"has 'rm_chosen' but not 'rm_rejected'"),
    Case("only-prompt", "'prompt' without the response texts", lambda d: byo(d, _with(prompt="hi")), r"has 'prompt' but not 'chosen_text', 'rejected_text'"),
    Case("user-null", "a null user", lambda d: byo(d, _set("user", 4, None)), r"'user' is empty \(null\) in rows \[4\]"),
    Case("user-float", "float user ids (1.5)", lambda d: byo(d, _with(user=[1.5, 2.5, 3.5, 4.5] * 3)), r"'user' holds float64 values"),
    Case("user-list", "a list as a user id (JSON)", lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(user=[1, 2]) if i == 2 else None), fmt="jsonl"), r"'user' must hold strings or integers; rows \[2\] .*hold \['list'\]"),
    Case("user-dict", "an object as a user id (JSON)", lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(user={"id": 1}) if i == 2 else None), fmt="jsonl"), r"rows \[2\] .*hold \['dict'\]"),
    Case("user-bool", "true/false as user ids (JSON)", lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(user=i % 2 == 0)), fmt="jsonl"), r"'user' (holds bool|must hold strings)"),
    Case("user-int-vs-str", 'user 1 and user "1" in one file (JSON)', lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(user=1 if i < 6 else "1")), fmt="jsonl"), r"'user' ids \[1\] .* appear both as numbers and as strings"),
    Case("user-blank", "a whitespace-only user id", lambda d: byo(d, _set("user", 0, "   ")), r"'user' is blank in rows \[0\]"),
    Case("user-int", "integer user ids", lambda d: byo(d, _with(user=[0, 1, 2, 0] * 3)), None, "accepted: users '0', '1', '2'", _users("0", "1", "2")),
    Case("user-unicode", "user ids with NUL, RTL override, combining marks and emoji", lambda d: byo(d, _with(user=[WEIRD, "e\u0301", "\u00e9", WEIRD] * 3)), None, "accepted; 'é' precomposed and decomposed stay two users (no normalisation)", _users(WEIRD, "e\u0301", "\u00e9")),
    Case("pair-id-null", "a null pair_id", lambda d: byo(d, _set("pair_id", 3, None)), r"'pair_id' is empty \(null\) in rows \[3\]"),
    Case("pair-id-duplicate", "two pairs with the same pair_id", lambda d: byo(d, _set("pair_id", 1, "p0")), r"duplicate pair_id values \[p0\]"),
    Case("pair-id-int-vs-str", 'pair ids 5 and "5" (JSON)', lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(pair_id=5 if i == 0 else ("5" if i == 1 else r["pair_id"]))), fmt="jsonl"), r"'pair_id' ids \[5\] .* appear both as numbers and as strings"),
    Case("group-null", "a null group", lambda d: byo(d, _set("group", 7, None)), r"'group' is empty \(null\) in rows \[7\]"),
    Case("group-shared-name", "two users using the same group names", lambda d: byo(d), None, "accepted: groups are namespaced by user (6 groups, not 2)", lambda ds, d: ds.pairs["group"].nunique() == 6 or pytest.fail("groups merged")),
    Case("index-fraction", "chosen = 2.5", lambda d: byo(d, _set("chosen", 3, 2.5)), r"'chosen' must be integer row numbers .* rows \[3\]"),
    Case("index-integral-float", "chosen written as 2.0", lambda d: byo(d, _with(chosen=[float(x) for x in P()["chosen"]])), None, "accepted as row 2", lambda ds, d: ds.pairs["chosen"].tolist() == P()["chosen"].tolist() or pytest.fail()),
    Case("index-text", 'chosen = "abc" (JSON)', lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(chosen="abc") if i == 4 else None), fmt="jsonl"), r"'chosen' must be integer row numbers .* rows \[4\]"),
    Case("index-bool", "chosen = true (JSON)", lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(chosen=True) if i == 4 else None), fmt="jsonl"), r"'chosen' must be integer row numbers .* rows \[4\]"),
    Case("index-null", "a null rejected row", lambda d: byo(d, _set("rejected", 6, None)), r"'rejected' must be integer row numbers .* rows \[6\]"),
    Case("index-huge", "chosen = 10^30 (JSON integer beyond int64)", lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(chosen=10**30) if i == 0 else None), fmt="jsonl"), r"'chosen' must be integer row numbers .* rows \[0\]"),
    Case("index-negative", "chosen = -1", lambda d: byo(d, _set("chosen", 2, -1)), r"'chosen' out of range \[0, 24\) in rows \[2\]"),
    Case("index-too-big", "rejected = number of feature rows", lambda d: byo(d, _set("rejected", 5, 24)), r"'rejected' out of range \[0, 24\) in rows \[5\]"),
    Case("index-same", "chosen == rejected", lambda d: byo(d, _set("rejected", 0, 0)), r"chosen == rejected in rows \[0\]"),
    Case("split-unknown", "split = 'dev'", lambda d: byo(d, _with(split=["train", "test", "dev", "train"] * 3)), r"'split' values \[dev\] .* are not train/test/validation"),
    Case("split-null", "a null split", lambda d: byo(d, _set("split", 2, None, base=_with(split="train"))), r"'split' is empty \(null\) in rows \[2\]"),
    Case("split-case-space", "split values 'TRAIN', 'Validation', ' train '", lambda d: byo(d, _mixed_split_case()), None, "accepted: normalised to train/test", lambda ds, d: set(ds.pairs["source_split"]) == {"train", "test"} or pytest.fail()),
    Case("split-group-both-halves", "one group with rows in both splits", lambda d: byo(d, _group_spans_splits()), r"a group spans both source splits"),
    Case("rm-nan", "rm_chosen = NaN", lambda d: byo(d, _set("rm_chosen", 3, float("nan"), base=pairs_table(rm=True))), r"'rm_chosen' is NaN, Inf, empty or not a number in rows \[3\]"),
    Case("rm-inf", "rm_rejected = -Inf", lambda d: byo(d, _set("rm_rejected", 3, float("-inf"), base=pairs_table(rm=True))), r"'rm_rejected' is NaN, Inf"),
    Case("rm-text", 'rm_chosen = "high" (JSON)', lambda d: byo(d, _jsonl_rows(lambda i, r: r.update(rm_chosen="high" if i == 1 else 0.5, rm_rejected=0.1)), fmt="jsonl"), r"'rm_chosen' is NaN, Inf, empty or not a number in rows \[1\]"),
    Case("rm-bool", "rm scores true/false", lambda d: byo(d, _with(rm_chosen=True, rm_rejected=False)), r"'rm_chosen' is NaN, Inf, empty or not a number"),
    Case("rm-huge", "rm_chosen = 1e300 (beyond float32)", lambda d: byo(d, _set("rm_chosen", 0, 1e300, base=pairs_table(rm=True))), r"'rm_chosen' beyond float32's range"),
    Case("rm-conflict", "one feature row given two different rm scores", lambda d: byo(d, _rm_conflict()), r"one feature row gets different rm scores"),
    Case("rm-float32-tie", "rm scores that differ only below float32 precision", lambda d: byo(d, _rm_tie32()), None, "accepted; counted in the dataset line as rm ties (a tie counts as wrong)", _noted("equal in float32", 1)),
    Case("text-prompt-null", "a null prompt", lambda d: byo(d, _set("prompt", 2, None, base=_text_pairs())), r"row 2: 'prompt' must be a string or a list of messages"),
    Case("text-response-null", "a null chosen_text", lambda d: byo(d, _set("chosen_text", 2, None, base=_text_pairs())), r"row 2: 'chosen_text' must be a string"),
    Case("text-content-list", "a JSON prompt whose message content is a list", lambda d: byo(d, _text_pairs(json.dumps([{"role": "user", "content": ["a", "b"]}]))), r"content is list, not str"),
    Case("text-role-model", "a JSON prompt with role 'model'", lambda d: byo(d, _text_pairs(json.dumps([{"role": "model", "content": "x"}]))), r"has role 'model'"),
    Case("text-message-not-dict", "a JSON prompt that is a list of strings", lambda d: byo(d, _text_pairs(json.dumps(["hello"]))), r"message 0 must be a dict with 'role' and 'content'"),
    Case("text-bracket-not-json", 'a plain prompt starting with "[" that is not JSON', lambda d: byo(d, _text_pairs("[draft] what is 2+2?")), None, "accepted as one user message (documented)", _texts_round_trip("[draft] what is 2+2?", "c0")),
    Case("text-unicode", "texts with NUL, RTL, combining marks, ZWJ emoji, U+FFFF", lambda d: byo(d, _text_pairs(WEIRD, chosen=[WEIRD + str(i) for i in range(12)]), fmt="jsonl"), None, "accepted; round-trips exactly", _texts_round_trip(WEIRD, WEIRD + "0")),
    Case("text-enormous", "a 5 MB prompt and a 1 MB response", lambda d: byo(d, _text_pairs("p" * 5_000_000, chosen=["c" * 1_000_000] + [f"c{i}" for i in range(1, 12)])), None, "accepted; round-trips exactly (no truncation at load)", _texts_round_trip("p" * 5_000_000, "c" * 1_000_000)),
    Case("text-row-two-texts", "one feature row given two different texts", lambda d: byo(d, _set("chosen", 1, 0, base=_text_pairs())), r"feature row 0 is shared by different texts"),
    Case("dup-judgement", "the same judgement twice (same user, chosen and rejected rows)", lambda d: byo(d, _dup_judgement()), None, "counted skip: kept once, 1 dropped (dataset line)", _dropped("judgements repeated verbatim (same user, chosen and rejected row; kept once)", 1, 11)),
    Case("dup-other-user", "the same pair judged by two users", lambda d: byo(d, _cross_user_same_rows()), None, "accepted: both kept (different users)", lambda ds, d: len(ds.pairs) == 12 or pytest.fail()),
    Case("dup-reversed", "a pair and its reverse by the same user (contradictory labels)", lambda d: byo(d, _reversed_pair()), None, "accepted: both kept (noisy labels are data)", lambda ds, d: len(ds.pairs) == 12 or pytest.fail()),
    Case("user-one-pair", "a user with a single pair", lambda d: byo(d, pd.concat([P(), pd.DataFrame([{"user": "solo", "pair_id": "s", "group": "s", "chosen": 22, "rejected": 23}])]).iloc[[*range(11), 12]]), None, "accepted; at run time the users without train or test pairs are counted in a note", _users("u0", "u1", "u2", "solo")),
]

FEATURE_CASES = [
    Case("npy-0-bytes", "features.npy of 0 bytes", lambda d: (byo(d), (d / "features.npy").write_bytes(b"")), r"cannot read feature file"),
    Case("npy-truncated", "features.npy cut in half", lambda d: (byo(d), rewrite(d / "features.npy", lambda b: b[: len(b) // 2])), r"cannot read feature file"),
    Case("npy-header-only", "features.npy holding only its header", lambda d: (byo(d), rewrite(d / "features.npy", lambda b: b[:128])), r"cannot read feature file"),
    Case("npy-garbage", "features.npy with a corrupt header", lambda d: (byo(d), (d / "features.npy").write_bytes(b"\x93NUMPY" + os.urandom(200))), r"cannot read feature file"),
    Case("npy-header-syntax", "a .npy header damaged into bad Python syntax (one byte)", lambda d: (byo(d), rewrite(d / "features.npy", lambda b: b[:8] + b"(" + b[9:])), r"cannot read feature file .*TokenError"),
    Case("npy-header-type", "a .npy header whose shape is damaged into another type (one byte)", lambda d: (byo(d), rewrite(d / "features.npy", lambda b: b[:26] + b"B" + b[27:])), r"cannot read feature file .*TypeError"),
    Case("npy-pickle", "an object array (pickle) in features.npy", lambda d: (byo(d, no_features=True), np.save(d / "features.npy", np.array([{"a": 1}] * 24, dtype=object), allow_pickle=True)), r"cannot read feature file .*(Object arrays|Python objects)"),
    Case("npy-int", "int32 features", lambda d: byo(d, feats=np.ones((24, 4), np.int32)), r"dtype int32 is not a float type"),
    Case("npy-bool", "bool features", lambda d: byo(d, feats=np.ones((24, 4), bool)), r"dtype bool is not a float type"),
    Case("npy-complex", "complex64 features", lambda d: byo(d, feats=np.ones((24, 4), np.complex64)), r"dtype complex64 is not a float type"),
    Case("npy-structured", "a structured (record) array", lambda d: byo(d, feats=np.zeros(24, dtype=[("a", "<f4"), ("b", "<f4")])), r"is not a float type"),
    Case("npy-big-endian", "big-endian float32 ('>f4')", lambda d: byo(d, feats=feature_matrix(24).astype(">f4")), r"dtype >f4 is not in this machine's byte order"),
    Case("npy-0d", "a 0-d array", lambda d: byo(d, feats=np.float32(1.0)), r"has shape \(\); it must be"),
    Case("npy-1d", "a 1-D array", lambda d: byo(d, feats=np.zeros(24, np.float32)), r"has shape \(24,\); it must be"),
    Case("npy-4d", "a 4-D array", lambda d: byo(d, feats=np.zeros((24, 1, 2, 2), np.float32)), r"has shape \(24, 1, 2, 2\); it must be"),
    Case("npy-dim-0", "features of shape (24, 0)", lambda d: byo(d, feats=np.zeros((24, 0), np.float32)), r"no rows or no feature dimensions"),
    Case("npy-rows-0", "features of shape (0, 4)", lambda d: byo(d, feats=np.zeros((0, 4), np.float32)), r"no rows or no feature dimensions"),
    Case("npy-too-few-rows", "fewer feature rows than chosen/rejected index", lambda d: byo(d, feats=feature_matrix(10)), r"out of range \[0, 10\)"),
    Case("npy-extra-rows", "more feature rows than used", lambda d: byo(d, feats=feature_matrix(100)), None, "accepted; unused rows are never read", lambda ds, d: ds.features.n_rows == 100 or pytest.fail()),
    Case("npy-3d-with-index", "(pairs, 2, dim) features together with chosen/rejected columns", lambda d: byo(d, feats=np.zeros((12, 2, 4), np.float32)), r"with chosen/rejected columns it must be \(rows, dim\)"),
    Case("npy-3d-wrong-pairs", "(pairs, 2, dim) features with the wrong number of pairs", lambda d: byo(d, P().drop(columns=["chosen", "rejected"]), feats=np.zeros((11, 2, 4), np.float32)), r"must be \(12, 2, dim\)"),
    Case("npy-3d-three", "(pairs, 3, dim) features", lambda d: byo(d, P().drop(columns=["chosen", "rejected"]), feats=np.zeros((12, 3, 4), np.float32)), r"must be \(12, 2, dim\)"),
    Case("feat-nan", "NaN in a used feature row", lambda d: byo(d, feats=_feats_with({(5, 2): np.nan})), r"NaN/Inf features in rows \[5\] .*used by pairs \[2\]"),
    Case("feat-inf", "+Inf and -Inf in used rows (float16)", lambda d: byo(d, feats=_feats_with({(0, 0): np.inf, (9, 3): -np.inf}, np.float16)), r"NaN/Inf features in rows \[0, 9\]"),
    Case("feat-nan-unused", "NaN in a feature row no pair uses", lambda d: byo(d, feats=_feats_with({(30, 1): np.nan}, rows=40)), None, "accepted; only used rows are checked and read", lambda ds, d: np.isfinite(ds.features.take(np.arange(24))).all() or pytest.fail()),
    Case("feat-f64-huge", "float64 value 1e300 (beyond float32) in a used row", lambda d: byo(d, feats=_feats_with({(3, 1): 1e300}, np.float64)), r"float64 features beyond float32's range .* rows \[3\]"),
    Case("feat-f64-tiny", "float64 features of magnitude 1e-300 (below float32's subnormals)", lambda d: byo(d, feats=feature_matrix(24, dtype=np.float64) * 1e-300), None, "accepted; noted twice in the dataset line: rows read as 0, and pairs whose features are identical", lambda ds, d: (_noted("below float32", 24)(ds, d), _noted("features are identical", 12)(ds, d))),
    Case("feat-f16-subnormal", "float16 subnormal values (6e-8)", lambda d: byo(d, feats=(feature_matrix(24) * 6e-8).astype(np.float16)), None, "accepted; values read exactly", _features_exact((feature_matrix(24) * 6e-8).astype(np.float16))),
    Case("feat-f32-subnormal", "float32 subnormal values (1e-40)", lambda d: byo(d, feats=(feature_matrix(24) * np.float32(1e-40)).astype(np.float32)), None, "accepted; values read exactly", _features_exact((feature_matrix(24) * np.float32(1e-40)).astype(np.float32))),
    Case("feat-negative-zero", "-0.0 everywhere in one row", lambda d: byo(d, feats=_feats_with({(2, i): -0.0 for i in range(4)})), None, "accepted", _features_exact(_feats_with({(2, i): -0.0 for i in range(4)}))),
    Case("feat-all-zero", "all-zero features", lambda d: byo(d, feats=np.zeros((24, 4), np.float16)), None, "accepted; the dataset line notes 12 pairs with identical features (ties count as wrong)", _noted("features are identical", 12)),
    Case("st-0-bytes", "features.safetensors of 0 bytes", lambda d: (byo(d, no_features=True), (d / "features.safetensors").write_bytes(b"")), r"cannot read feature file"),
    Case("st-truncated", "features.safetensors cut in half", lambda d: (byo(d, no_features=True), write_features(d, feature_matrix(24), "safetensors"), rewrite(d / "features.safetensors", lambda b: b[: len(b) // 2])), r"cannot read feature file"),
    Case("st-header-lies", "a safetensors header promising more data than the file holds", lambda d: _safetensors_raw(d, {"features": {"dtype": "F32", "shape": [24, 4], "data_offsets": [0, 384]}}, b"\0" * 100), r"cannot read feature file"),
    Case("st-bf16", "bfloat16 safetensors", lambda d: _safetensors_raw(d, {"features": {"dtype": "BF16", "shape": [24, 4], "data_offsets": [0, 192]}}, b"\0" * 192), r"cannot read feature file"),
    Case("st-wrong-name", "safetensors whose tensor is not named 'features'", lambda d: (byo(d, no_features=True), __import__("safetensors.numpy").numpy.save_file({"feats": feature_matrix(24)}, str(d / "features.safetensors"))), r"no tensor named 'features' \(found \['feats'\]\)"),
    Case("st-int8", "int8 safetensors", lambda d: byo(d, feats=np.ones((24, 4), np.int8), ffmt="safetensors"), r"dtype int8 is not a float type"),
    Case("st-ok", "float16 safetensors (with an extra tensor)", lambda d: (byo(d, no_features=True), __import__("safetensors.numpy").numpy.save_file({"features": feature_matrix(24, dtype=np.float16), "other": np.zeros(3, np.float32)}, str(d / "features.safetensors"))), None, "accepted; values read exactly", _features_exact(feature_matrix(24, dtype=np.float16))),
]

CONFIG_CASES = [
    Case("yaml-malformed", "dataset.yaml that is not YAML", lambda d: byo(d, yaml="name: [unclosed\n"), r"dataset.yaml is not valid YAML"),
    Case("yaml-latin1", "Latin-1 bytes in dataset.yaml", lambda d: (byo(d), (d / "dataset.yaml").write_bytes("name: café\n".encode("latin-1"))), r"dataset.yaml is not valid UTF-8"),
    Case("yaml-python-tag", "a !!python/object tag in dataset.yaml", lambda d: byo(d, yaml="name: !!python/object/apply:os.system ['touch pwned']\n"), r"dataset.yaml is not valid YAML: could not determine a constructor"),
    Case("yaml-list", "dataset.yaml holding a list", lambda d: byo(d, yaml="- a\n- b\n"), r"must be a mapping"),
    Case("yaml-typo-key", "an unknown key 'split-by'", lambda d: byo(d, yaml="split-by: source\n"), r"unknown key 'split-by'; did you mean 'split_by'"),
    Case("yaml-family", "family 'prsim'", lambda d: byo(d, yaml="family: prsim\n"), r"family 'prsim' is not one of prism, reddit, generic; did you mean 'prism'"),
    Case("yaml-split-by", "split_by 'random'", lambda d: byo(d, yaml="split_by: random\n"), r"split_by 'random' is not one of group, source"),
    Case("yaml-source-no-column", "split_by: source without a 'split' column", lambda d: byo(d, yaml="split_by: source\n"), r"says split_by: source but .* has no 'split' column"),
    Case("yaml-shots-negative", "shots: -3", lambda d: byo(d, yaml="shots: -3\n"), r"shots must be ≥ 1"),
    Case("yaml-shots-text", "shots: many", lambda d: byo(d, yaml="shots: many\n"), r"shots must be a positive integer or 'all'"),
    Case("yaml-shots-list", "unseen_shots: [5, 10]", lambda d: byo(d, yaml="unseen_shots: [5, 10]\n"), r"unseen_shots must be a positive integer or 'all'"),
    Case("yaml-name-list", "name: [a, b]", lambda d: byo(d, yaml="name: [a, b]\n"), r"name must be a string"),
    Case("yaml-name-empty", 'name: ""', lambda d: byo(d, yaml='name: ""\n'), r"name is empty"),
    Case("yaml-empty", "an empty dataset.yaml", lambda d: byo(d, yaml=""), None, "accepted: defaults (name = directory, family generic)", lambda ds, d: (ds.family, ds.name) == ("generic", d.name) or pytest.fail()),
]

CASE_TABLES = [
    ("bring-your-own: files", "test_byo_case", FILE_CASES),
    ("bring-your-own: columns and values", "test_byo_case", COLUMN_CASES),
    ("bring-your-own: features.npy / .safetensors", "test_byo_case", FEATURE_CASES),
    ("bring-your-own: dataset.yaml", "test_byo_case", CONFIG_CASES),
]
ALL_BYO = FILE_CASES + COLUMN_CASES + FEATURE_CASES + CONFIG_CASES


@pytest.mark.parametrize("case", ALL_BYO, ids=[c.id for c in ALL_BYO])
def test_byo_case(tmp_path, case):
    d = tmp_path / "data"
    target = case.build(d)
    path = target.path if isinstance(target, Load) else d
    if case.expect is not None:
        with pytest.raises(Exception) as e:
            load_directory(path)
        assert_clear_error(e.value, case.expect)
        assert isinstance(e.value, DataError)
    else:
        ds = load_directory(path)
        if case.check is not None:
            case.check(ds, path)
        assert ds.validate() is ds


def test_case_ids_are_unique():
    ids = [c.id for c in ALL_BYO]
    assert len(ids) == len(set(ids))


def test_python_tag_ran_nothing(tmp_path):
    d = byo(tmp_path / "d", yaml="name: !!python/object/apply:os.system ['touch pwned']\n")
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        with pytest.raises(DataError):
            load_directory(d)
    finally:
        os.chdir(cwd)
    assert not (tmp_path / "pwned").exists()


# ---------------------------------------------------------------------------- end to end: no wrong number


def test_run_counts_users_without_train_or_test_pairs(tmp_path, cli):
    """Users with one pair or one group end up with no train (or no test) pairs: counted in notes,
    their accuracy is NaN (never 0 or 1), and the means leave them out."""
    rows = []
    rng = np.random.default_rng(3)
    for u in range(8):
        n = 1 if u < 2 else 6
        for i in range(n):
            k = len(rows)
            rows.append({"user": f"u{u}", "group": "g" if u == 2 else f"g{i}", "chosen": 2 * k, "rejected": 2 * k + 1, "rm_chosen": rng.standard_normal(), "rm_rejected": rng.standard_normal()})
    d = byo(tmp_path / "edge", pd.DataFrame(rows), feats=feature_matrix(2 * len(rows)))
    code, out, err = cli("run", "--methods", "rm", "--dataset", d, "--repeats", "3", "--results", tmp_path / "r")
    assert code == 0, err
    assert "users have no train pairs" in out
    from bench.store import ResultsStore

    res, _, _ = ResultsStore(tmp_path / "r").load()
    assert res["accuracy"][res["n_test"] == 0].isna().all()
    assert res["accuracy"][res["n_test"] > 0].notna().all()


def _expected_rm_accuracy(raw: pd.DataFrame, ds, split) -> pd.Series:
    """Per-user accuracy of the rm baseline recomputed from the raw table: a test pair is right
    when float32(rm_chosen) > float32(rm_rejected) (ties wrong), users as in the raw file."""
    test = ~split.train
    raw_row = ds.pairs["pair_id"].astype(str).map({str(p): i for i, p in enumerate(raw["pair_id"].astype(str))}).to_numpy()[test]
    rc = raw["rm_chosen"].to_numpy(dtype=np.float64).astype(np.float32)[raw_row]
    rr = raw["rm_rejected"].to_numpy(dtype=np.float64).astype(np.float32)[raw_row]
    users = raw["user"].astype(str).to_numpy()[raw_row]
    return pd.Series(rc > rr).groupby(users).mean()


USER_IDS = st.sampled_from(["a", "b", "c", "é", "e\u0301", "\U0001f600", "NA", "007", "7", "a\x00b", "\u202eabc", "x" * 300])
SCORES = st.one_of(st.floats(-1e6, 1e6), st.sampled_from([0.0, -0.0, 1.0, 1.0 + 1e-12, 5e-324, 3e38]))
# One corruption = (column, value) written into one random row; values a loader must refuse.
CORRUPTIONS = [
    ("user", ""), ("user", "   "), ("user", None), ("user", 7), ("pair_id", "DUP"), ("pair_id", None),
    ("chosen", -1), ("chosen", 10**6), ("chosen", 1.5), ("chosen", None), ("chosen", "x"), ("chosen", True),
    ("rejected", "SAME"), ("rm_chosen", float("nan")), ("rm_rejected", float("inf")), ("rm_chosen", 1e39),
    ("rm_chosen", "high"), ("split", "dev"), ("split", None), ("feature", float("nan")), ("feature", float("-inf")),
]


@st.composite
def byo_tables(draw):
    """A valid table (2–14 pairs, Unicode user ids, rm scores with float32 ties, optional split)
    with 0–2 corruptions from CORRUPTIONS (none in about half of the examples)."""
    n = draw(st.integers(2, 14), label="pairs")
    n_rows = draw(st.integers(4, 16), label="feature rows")
    score = draw(st.lists(SCORES, min_size=n_rows, max_size=n_rows), label="rm score per row")  # one per response row
    rows = []
    for i in range(n):
        c, r = draw(st.lists(st.integers(0, n_rows - 1), min_size=2, max_size=2, unique=True))
        rows.append({"user": draw(USER_IDS), "pair_id": f"p{i}", "chosen": c, "rejected": r, "rm_chosen": score[c], "rm_rejected": score[r]})
    if draw(st.booleans(), label="split column"):
        for rec in rows:
            rec["split"] = draw(st.sampled_from(["train", "test", "validation", "TRAIN"]))
    feats = draw(hnp.arrays(np.float32, (n_rows, 3), elements=st.floats(-1e4, 1e4, width=32, allow_subnormal=True)))
    k = draw(st.sampled_from([0, 0, 0, 1, 2]), label="corruptions")
    for _ in range(k):
        col, value = draw(st.sampled_from(CORRUPTIONS))
        i = draw(st.integers(0, n - 1))
        if col == "feature":
            feats[rows[i]["chosen"], draw(st.integers(0, 2))] = value
        elif col == "rejected":
            rows[i]["rejected"] = rows[i]["chosen"]
        elif col == "pair_id" and value == "DUP":
            rows[i]["pair_id"] = rows[(i + 1) % n]["pair_id"]
        elif col != "split" or "split" in rows[0]:
            rows[i][col] = value
    fmt = draw(st.sampled_from(["jsonl", "csv", "parquet"]), label="format")
    return rows, feats, fmt, k


@HYP
@given(byo_tables())
def test_property_byo_tables_rejected_or_exact(table):
    """Random tables: a DataError, or an accepted dataset whose pairs, features and rm accuracy
    (through the engine: split, query order, rm baseline, metrics) match the raw input."""
    from bench.registry import load_method
    from bench.runner import run_single

    rows, feats, fmt, k = table
    raw = pd.DataFrame(rows)
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp) / "d"
        try:
            byo(d, raw, feats=feats, fmt=fmt)
        except Exception:  # pyarrow cannot even write a mixed-type column: not an input
            event("not writable in this format")
            return
        try:
            ds = load_directory(d)
        except DataError as e:
            assert e.hint
            event(f"rejected (corruptions: {k})")
            return
        event(f"accepted (corruptions: {k})")
        # Accepted: every pair is a raw row, with its user written as text; verbatim repeats
        # are dropped and counted; used features are exact and finite.
        raw["pair_id"] = raw["pair_id"].astype(str)
        at = raw.set_index("pair_id")
        got = at.loc[ds.pairs["pair_id"]]
        assert (got["user"].astype(str).to_numpy() == ds.pairs["user"].to_numpy()).all()
        assert (got["chosen"].astype(float).to_numpy() == ds.pairs["chosen"].to_numpy()).all()
        assert (got["rejected"].astype(float).to_numpy() == ds.pairs["rejected"].to_numpy()).all()
        key = pd.DataFrame({"u": raw["user"].astype(str), "c": raw["chosen"].astype(float), "r": raw["rejected"].astype(float)})
        repeats = int(key.duplicated().sum())
        assert len(ds.pairs) == len(raw) - repeats
        assert sum(ds.meta["dropped"].values()) == repeats
        used = np.unique(np.r_[ds.pairs["chosen"], ds.pairs["rejected"]])
        f = ds.features.take(used)
        assert np.isfinite(f).all()
        np.testing.assert_array_equal(f, feats[used])
        if ds.pairs["user"].nunique() < 2:
            return
        event("accepted and run through the engine (rm accuracy recomputed)")
        res = run_single(load_method("rm")(), ds, seed=0)
        exp = _expected_rm_accuracy(raw.astype({"rm_chosen": float, "rm_rejected": float}), ds, res.split)
        acc = res.per_user.set_index("user")["accuracy"].dropna()
        assert sorted(acc.index) == sorted(exp.index)
        np.testing.assert_allclose(acc.loc[exp.index].to_numpy(), exp.to_numpy())


SPECIALS = [float("nan"), float("inf"), float("-inf"), 1e300, -1e300, 1e-300, 5e-324, 6e-8, 1e-40, -0.0]


@st.composite
def feature_arrays(draw):
    """Half valid shapes (rows ≥ 12, dim ≥ 1), half any 1–3-D shape with sides 0–30; float16/32/64;
    finite values with 0–3 specials (NaN, ±Inf, ±1e300, 1e-300, subnormals, -0.0) injected."""
    dtype = draw(st.sampled_from([np.float16, np.float32, np.float64]), label="dtype")
    if draw(st.booleans(), label="valid shape"):
        shape = (draw(st.integers(12, 30)), draw(st.integers(1, 8)))
    else:
        shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=0, max_side=30))
    arr = draw(hnp.arrays(dtype, shape, elements=st.floats(-100, 100, width=16)))
    if arr.size:
        for _ in range(draw(st.sampled_from([0, 0, 1, 2, 3]), label="specials")):
            with np.errstate(over="ignore"):
                arr.flat[draw(st.integers(0, arr.size - 1))] = draw(st.sampled_from(SPECIALS))
    return arr


@HYP
@given(feature_arrays(), st.sampled_from(["npy", "safetensors"]))
def test_property_feature_arrays_rejected_or_exact(arr, ffmt):
    """Random feature arrays under a fixed valid pairs table: a DataError, or features that
    methods read exactly as float32, all finite."""
    p = pairs_table(2, 3)  # rows 0..11
    with tempfile.TemporaryDirectory() as tmp:
        d = byo(Path(tmp) / "d", p, feats=arr, ffmt=ffmt)
        try:
            ds = load_directory(d)
        except DataError as e:
            assert e.hint
            event("rejected")
            return
        event("accepted")
        assert arr.ndim == 2 and arr.shape[0] >= 12 and arr.shape[1] > 0
        used = np.arange(12)
        got = ds.features.take(used)
        assert np.isfinite(got).all()
        np.testing.assert_array_equal(got, arr[used].astype(np.float32))


@settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=FIXED, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(["parquet", "jsonl", "csv", "npy", "safetensors"]), st.data())
def test_property_corrupted_bytes_never_crash(kind, data):
    """Valid files with random bytes overwritten or the tail cut off: a DataError or an accepted
    dataset (a corrupted byte may still spell a valid file), never another exception."""
    with tempfile.TemporaryDirectory() as tmp:
        d = byo(Path(tmp) / "d", pairs_table(rm=True), fmt=kind if kind in ("parquet", "jsonl", "csv") else "parquet", ffmt=kind if kind in ("npy", "safetensors") else "npy")
        target = next(d.glob("pairs.*")) if kind in ("parquet", "jsonl", "csv") else next(d.glob("features.*"))
        b = bytearray(target.read_bytes())
        if data.draw(st.booleans(), label="truncate"):
            b = b[: data.draw(st.integers(0, len(b) - 1), label="cut")]
        else:
            for _ in range(data.draw(st.integers(1, 8), label="flips")):
                b[data.draw(st.integers(0, len(b) - 1))] = data.draw(st.integers(0, 255))
        target.write_bytes(bytes(b))
        try:
            ds = load_directory(d)
        except DataError as e:
            assert e.hint
            event(f"{kind}: rejected")
            return
        event(f"{kind}: accepted")
        assert ds.validate() is ds
        used = np.unique(np.r_[ds.pairs["chosen"], ds.pairs["rejected"]])
        assert np.isfinite(ds.features.take(used)).all()
        assert np.isfinite(ds.rm_score).all()


def test_every_byte_of_a_parquet_table_damaged_is_rejected_or_exact(tmp_path):
    """Each byte of a valid pairs.parquet set to 0xFF in turn (4,700 files): an error with a fix,
    or a dataset that validates — never a traceback. (A random search once found a damaged text
    page that read as invalid UTF-8 and failed later inside a string operation.)"""
    d = byo(tmp_path / "d", pairs_table(rm=True))
    path = d / "pairs.parquet"
    clean = path.read_bytes()
    outcomes = {"rejected": 0, "accepted": 0}
    for i in range(len(clean)):
        if clean[i] == 0xFF:
            continue
        path.write_bytes(clean[:i] + b"\xff" + clean[i + 1 :])
        try:
            ds = load_directory(d)
        except DataError as e:
            assert e.hint, (i, str(e))
            outcomes["rejected"] += 1
            continue
        outcomes["accepted"] += 1
        assert ds.validate() is ds, i
    assert outcomes["rejected"] > 0 and sum(outcomes.values()) > 0.9 * len(clean), outcomes


# ---------------------------------------------------------------------------- the real CLI: no traceback

CLI_CASES = [
    ("cli-parquet-truncated", "parquet-truncated", r"cannot read .*pairs.parquet"),
    ("cli-jsonl-latin1", "jsonl-latin1", r"not valid UTF-8"),
    ("cli-lone-surrogate", "jsonl-lone-surrogate", r"lone UTF-16 surrogate"),
    ("cli-npy-pickle", "npy-pickle", r"cannot read feature file"),
    ("cli-feat-nan", "feat-nan", r"NaN/Inf features in rows \[5\]"),
    ("cli-user-int-vs-str", "user-int-vs-str", r"appear both as numbers and as strings"),
    ("cli-yaml-typo", "yaml-typo-key", r"unknown key 'split-by'; did you mean 'split_by'"),
    ("cli-st-header-lies", "st-header-lies", r"cannot read feature file"),
]
CLI_FLAG_CASES = [
    ("cli-param-type", ["--param", "bt.iterations=abc"], r"expected an integer"),
    ("cli-param-nan", ["--param", "bt.lr=.nan"], r"NaN and Inf are not parameter values"),
    ("cli-dataset-option", None, r"unknown dataset option 'min_pair'"),
]


def _bench(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONWARNINGS="ignore", COLUMNS="200")
    return subprocess.run([sys.executable, "-m", "bench", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def _assert_clean_failure(proc: subprocess.CompletedProcess, pattern: str) -> None:
    text = proc.stdout + proc.stderr
    assert proc.returncode != 0, text
    assert "Traceback" not in text, text
    assert "error:" in proc.stderr and "fix:" in proc.stderr, text
    import re

    assert re.search(pattern, " ".join(text.split())), text


@pytest.mark.parametrize("cli_id, case_id, pattern", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_cli_bad_dataset_exits_cleanly(tmp_path, cli_id, case_id, pattern):
    case = next(c for c in ALL_BYO if c.id == case_id)
    d = tmp_path / "data"
    case.build(d)
    proc = _bench(["run", "--methods", "bt", "--dataset", str(d), "--repeats", "1", "--results", str(tmp_path / "r")], tmp_path)
    _assert_clean_failure(proc, pattern)


@pytest.mark.parametrize("cli_id, extra, pattern", CLI_FLAG_CASES, ids=[c[0] for c in CLI_FLAG_CASES])
def test_cli_bad_flags_exit_cleanly(tmp_path, cli_id, extra, pattern):
    d = byo(tmp_path / "data")
    if extra is None:
        args = ["run", "--methods", "bt", "--dataset", "movielens:min_pair=3", "--repeats", "1"]
    else:
        args = ["run", "--methods", "bt", "--dataset", str(d), "--repeats", "1", *extra]
    proc = _bench([*args, "--results", str(tmp_path / "r")], tmp_path)
    _assert_clean_failure(proc, pattern)


EXTRA_ROWS = [
    ("random pairs tables (hypothesis: 1–14 rows; Unicode/blank/'NA'/'007' user ids; duplicate, integer and string pair ids; chosen out of range, fractional, null, text, bool; rm NaN/±Inf/1e39/subnormal/float32 ties; split values incl. 'dev'; NaN/Inf/subnormal float32 features; parquet/jsonl/csv)",
     "bring-your-own", "DataError with a hint, or accepted: pair count = rows − counted repeats, used features exact and finite, and the rm baseline's per-user accuracy through the engine equals a recomputation from the raw file", "`test_hostile_inputs::test_property_byo_tables_rejected_or_exact`"),
    ("random feature arrays (hypothesis: 1–3-D, sides 0–30, float16/32/64, NaN/±Inf/subnormal/±1e300/1e-300) under a valid table; .npy and .safetensors",
     "bring-your-own", "DataError with a hint, or accepted with every used row read exactly (float32) and finite", "`test_hostile_inputs::test_property_feature_arrays_rejected_or_exact`"),
    ("valid parquet/jsonl/csv/npy/safetensors files with 1–8 random bytes overwritten or the tail cut at a random point (hypothesis)",
     "bring-your-own", "DataError with a hint, or accepted (the bytes still spell a valid file) with a valid dataset: never another exception", "`test_hostile_inputs::test_property_corrupted_bytes_never_crash`"),
    ("dataset.yaml with `!!python/object/apply:os.system`", "bring-your-own", "refused by yaml.safe_load; the command never runs", "`test_hostile_inputs::test_python_tag_ran_nothing`"),
    ("users with 1 pair or a single group, run end to end", "bring-your-own + `bench run`", "note: N users have no train pairs / no test pairs; their accuracy is NaN and left out of means (never 0 or 1)", "`test_hostile_inputs::test_run_counts_users_without_train_or_test_pairs`"),
    *[(f"`bench run --dataset DIR` on the input of case `{c}`", "CLI (subprocess)", "exit code 2, `error:` + `fix:` on stderr, no traceback", f"`test_hostile_inputs::test_cli_bad_dataset_exits_cleanly[{i}]`") for i, c, _ in CLI_CASES],
    ("`--param bt.iterations=abc`", "CLI (subprocess)", "exit 2: expected an integer, no traceback", "`test_hostile_inputs::test_cli_bad_flags_exit_cleanly[cli-param-type]`"),
    ("`--param bt.lr=.nan`", "CLI (subprocess)", "exit 2: NaN and Inf are not parameter values (before: a traceback from the cell-key hash)", "`test_hostile_inputs::test_cli_bad_flags_exit_cleanly[cli-param-nan]`"),
    ("`--dataset movielens:min_pair=3` (typo)", "CLI (subprocess)", "exit 2: unknown dataset option 'min_pair'; did you mean 'min_pairs'", "`test_hostile_inputs::test_cli_bad_flags_exit_cleanly[cli-dataset-option]`"),
]

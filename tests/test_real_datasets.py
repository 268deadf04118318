"""PRISM and Reddit TL;DR loaders on fixtures in the exact Hub schemas, against hand-built pairs."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from bench.data import messages_to_json
from bench.errors import DataError
from tests.realdata import reddit_row, write_prism, write_reddit_parquet, write_reddit_raw


def _load(name, **options):
    from bench.config import dataset_config
    from bench.registry import load_dataset_loader

    options.setdefault("features", "none")
    return load_dataset_loader(name)(name, options, dataset_config(name))


def _pairs(ds):
    """(user, group, pair id, prompt json, chosen text, rejected text, half) per pair."""
    out = []
    for r in ds.pairs.itertuples():
        c, j = ds.responses.iloc[r.chosen], ds.responses.iloc[r.rejected]
        assert c["prompt_id"] == j["prompt_id"]
        out.append((r.user, r.group, r.pair_id, messages_to_json(ds.prompts[str(c["prompt_id"])]), c["text"], j["text"], r.source_split))
    return sorted(out)


def _expected_prism(exp):
    return sorted((u, g, p, messages_to_json(m), c, r, s) for u, g, p, m, c, r, s in exp)


# ---------------------------------------------------------------------------- PRISM


def test_prism_pairs_match_hand_built(tmp_path):
    d, expected, _ = write_prism(tmp_path / "prism")
    ds = _load("prism", data_dir=str(d))
    assert _pairs(ds) == _expected_prism(expected)
    assert ds.split_by == "group" and ds.family == "prism"
    assert sorted(ds.pairs["user"].unique()) == ["u1", "u3"]
    dropped = ds.meta["dropped"]
    assert dropped["conversations of users with no completed conversation in the survey"] == 1  # u4
    assert dropped["conversations without a turn that has a chosen and a rejected response"] == 1  # u2-c5
    assert dropped["conversations of users with fewer than 6 conversations"] == 5 + 3  # u2, u5
    assert dropped["pairs whose chosen and rejected texts are identical"] == 1
    notes = ds.meta["notes"]
    assert notes["extra chosen responses ignored (turns with several if_chosen)"] == 1
    assert notes["pairs with an EMPTY STRING side"] == 1
    # Identical (prompt, response) texts share one response row: "A goldfish." under p0 twice.
    assert len(ds.responses) == len(ds.responses.drop_duplicates(["prompt_id", "text"]))
    assert ds.summary()["dropped"] == dropped
    for msgs in ds.prompts.values():
        assert all(isinstance(m["content"], str) for m in msgs)


def test_prism_empty_drop_rule_and_threshold(tmp_path):
    d, _, expected_drop = write_prism(tmp_path / "prism")
    ds = _load("prism", data_dir=str(d), empty="drop")
    assert _pairs(ds) == _expected_prism(expected_drop)
    assert ds.meta["dropped"]["pairs with an EMPTY STRING side (empty=drop)"] == 1
    assert sorted(ds.pairs["user"].unique()) == ["u1", "u3"]  # same users as MRM
    # A lower threshold admits u2 (5 qualifying) and u5 (3).
    ds3 = _load("prism", data_dir=str(d), min_conversations=3)
    assert sorted(ds3.pairs["user"].unique()) == ["u1", "u2", "u3", "u5"]
    assert ds3.fingerprint != _load("prism", data_dir=str(d)).fingerprint  # filters are in the fingerprint


def test_prism_without_survey_keeps_u4(tmp_path):
    d, _, _ = write_prism(tmp_path / "prism", survey=False)
    ds = _load("prism", data_dir=str(d), min_conversations=1)
    assert "u4" in set(ds.pairs["user"])


def test_prism_env_var_and_fingerprint_in_rows(tmp_path, monkeypatch, cli):
    d, _, _ = write_prism(tmp_path / "prism")
    monkeypatch.setenv("BENCH_PRISM_DIR", str(d))
    ds = _load("prism")
    assert len(ds.pairs) == 16 and len(ds.fingerprint) == 24


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda c: c.pop("conversation_history"), "missing key 'conversation_history'"),
        (lambda c: c["conversation_history"][1].update(content=["a", "b"]), "'content' must be a string"),
        (lambda c: c["conversation_history"][1].pop("if_chosen"), "boolean 'if_chosen'"),
        (lambda c: c["conversation_history"][1].update(role="bot"), "unknown role"),
        (lambda c: c.update(user_id=7), "'user_id' must be a non-empty string"),
        (lambda c: c["conversation_history"][0].update(turn="0"), "'turn' must be a non-negative integer"),
    ],
)
def test_prism_bad_rows(tmp_path, mutate, message):
    d, _, _ = write_prism(tmp_path / "prism")
    lines = (d / "conversations.jsonl").read_text().splitlines()
    row = json.loads(lines[3])
    mutate(row)
    lines[3] = json.dumps(row)
    (d / "conversations.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="line 4") as e:
        _load("prism", data_dir=str(d))
    assert message in str(e.value)


def test_prism_malformed_json_duplicates_and_missing_files(tmp_path):
    d, _, _ = write_prism(tmp_path / "prism")
    text = (d / "conversations.jsonl").read_text()
    (d / "conversations.jsonl").write_text(text + '{"conversation_id": "x", \n')
    with pytest.raises(DataError, match=r"line \d+: malformed JSON"):
        _load("prism", data_dir=str(d))
    first = text.splitlines()[0]
    (d / "conversations.jsonl").write_text(text + first + "\n")
    with pytest.raises(DataError, match="appears twice"):
        _load("prism", data_dir=str(d))
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="does not hold the expected files") as e:
        _load("prism", data_dir=str(empty))
    assert "conversations.jsonl" in str(e.value) and "data_dir=DIR" in str(e.value)
    with pytest.raises(DataError, match="not a directory"):
        _load("prism", data_dir=str(tmp_path / "nope"))


# ---------------------------------------------------------------------------- Reddit


def _expected_reddit(expected):
    from bench.hashing import digest

    out = []
    for w, pid, prompt, c, r, half in expected:
        out.append((w, f"{w}:{pid}:{half}", digest("\x00".join((w, pid, half, c, r)), size=8), messages_to_json(prompt), c, r, half))
    return sorted(out)


def test_reddit_raw_json_pairs_match_hand_built(tmp_path):
    d, expected = write_reddit_raw(tmp_path / "tldr")
    ds = _load("reddit", data_dir=str(d))
    assert _pairs(ds) == _expected_reddit(expected)
    assert ds.split_by == "source" and ds.family == "reddit"
    dropped = ds.meta["dropped"]
    assert dropped["rows without a post (CNN/DM articles)"] == 2
    assert dropped["judgement repeated verbatim (kept once)"] == 1
    assert dropped["rows whose two summaries are the same text"] == 1
    assert dropped["rows with an empty post or summary"] == 1
    assert dropped["pairs of workers absent from one of the two halves"] == 2  # w3 (train only), w4 (CNN/DM only in test)
    assert ds.meta["rows_read"] == 12
    assert ds.defaults == {"shots": 100, "unseen_shots": 50}


def test_reddit_parquet_conversion_gives_the_same_pairs(tmp_path):
    d1, expected = write_reddit_raw(tmp_path / "raw")
    d2, _ = write_reddit_parquet(tmp_path / "pq")
    a, b = _load("reddit", data_dir=str(d1)), _load("reddit", data_dir=str(d2))
    assert _pairs(a) == _pairs(b) == _expected_reddit(expected)
    assert a.fingerprint != b.fingerprint  # file hashes are part of it


@pytest.mark.parametrize(
    "row_kw, mutate, message",
    [
        ({}, lambda r: r.pop("worker"), "missing key 'worker'"),
        ({}, lambda r: r.update(choice=2), "'choice' must be 0 or 1"),
        ({}, lambda r: r.update(choice="1"), "'choice' must be 0 or 1"),
        ({}, lambda r: r.update(summaries=[{"text": "only one"}]), "list of two summaries"),
        ({}, lambda r: r["summaries"][0].update(text=5), "must be a string"),
        ({}, lambda r: r["info"].update(post=["a"]), "info.post must be a string"),
        ({}, lambda r: r.update(split="dev"), "unknown split"),
        ({}, lambda r: r.update(info="text"), "'info' must be an object"),
    ],
)
def test_reddit_bad_rows(tmp_path, row_kw, mutate, message):
    d, _ = write_reddit_raw(tmp_path / "tldr")
    f = d / "comparisons" / "batch10.json"
    lines = f.read_text().splitlines()
    row = json.loads(lines[1])
    mutate(row)
    lines[1] = json.dumps(row)
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="batch10.json line 2") as e:
        _load("reddit", data_dir=str(d))
    assert message in str(e.value)


def test_reddit_malformed_line_and_layouts(tmp_path):
    d, _ = write_reddit_raw(tmp_path / "tldr")
    with open(d / "comparisons" / "batch9.json", "a") as f:
        f.write('{"info": {"id": "t3_x", \n')
    with pytest.raises(DataError, match="batch9.json line 7: malformed JSON"):
        _load("reddit", data_dir=str(d))
    both = tmp_path / "both"
    write_reddit_raw(both)
    write_reddit_parquet(both)
    with pytest.raises(DataError, match="several layouts"):
        _load("reddit", data_dir=str(both))
    only_cnn = tmp_path / "cnn"
    (only_cnn / "comparisons").mkdir(parents=True)
    row = reddit_row("w1", "c", None, " a", " b", 0, "train", article="x")
    (only_cnn / "comparisons" / "batch1.json").write_text(json.dumps(row) + "\n")
    with pytest.raises(DataError, match="no pairs are left"):
        _load("reddit", data_dir=str(only_cnn))


# ---------------------------------------------------------------------------- offline behaviour


def test_offline_fails_fast_with_instructions(tmp_path, monkeypatch):
    monkeypatch.setenv("BENCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("BENCH_REDDIT_DIR", raising=False)
    monkeypatch.delenv("BENCH_PRISM_DIR", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    for name, needle in (("reddit", "refs/convert/parquet"), ("prism", "conversations.jsonl")):
        t = time.perf_counter()
        with pytest.raises(DataError) as e:
            _load(name)
        assert time.perf_counter() - t < 5
        msg = str(e.value)
        assert "HF_HUB_OFFLINE" in msg and needle in msg and f"BENCH_{name.upper()}_DIR" in msg and f"{name}:data_dir=DIR" in msg
    # Without HF_HUB_OFFLINE, an unreachable endpoint is detected by a short connect, not retries.
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")
    for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(k, raising=False)
    t = time.perf_counter()
    with pytest.raises(DataError, match="cannot connect to 127.0.0.1:9"):
        _load("reddit")
    assert time.perf_counter() - t < 5


def test_cli_run_without_features_names_the_embed_command(tmp_path, cli):
    d, _, _ = write_prism(tmp_path / "prism")
    code, out, err = cli("run", "--methods", "bt", "--dataset", f"prism:data_dir={d}", "--results", tmp_path / "res", "--repeats", "1")
    assert code == 2
    text = " ".join((out + err).split())
    assert f"bench embed --dataset prism:data_dir={d} --model v2" in text
    assert "expected cost" in text and "texts" in text and "iB of float16 features" in text
    assert "Traceback" not in out + err


def test_embed_dry_run_prints_summary(tmp_path, cli):
    d, _ = write_reddit_raw(tmp_path / "tldr")
    code, out, err = cli("embed", "--dataset", f"reddit:data_dir={d}", "--dry-run")
    assert code == 0, err
    text = " ".join(out.split())
    assert "reddit: 2 users, 5 pairs" in text
    assert "dropped 2: rows without a post (CNN/DM articles)" in text
    assert "expected cost" in text


def test_message_contents_are_strings_everywhere(tmp_path):
    d, _, _ = write_prism(tmp_path / "prism")
    ds = _load("prism", data_dir=str(d))
    from bench.datasets.textdata import response_messages

    for row in range(len(ds.responses)):
        msgs = response_messages(ds, row)
        assert msgs[-1]["role"] == "assistant"
        assert all(isinstance(m["content"], str) for m in msgs)
    assert np.all(ds.pairs["chosen"].to_numpy() != ds.pairs["rejected"].to_numpy())

"""Fixtures in the exact Hub schemas of PRISM and Reddit TL;DR (texts invented, structure exact).

Each writer returns the directory and the pairs a correct loader must build, written out by hand
(user, group, pair id, prompt messages, chosen, rejected, half).
"""

from __future__ import annotations

import json
from pathlib import Path

# ---------------------------------------------------------------------------- PRISM

ATTRS = {"values": 60, "fluency": 90, "factuality": 85, "safety": 100, "diversity": 40, "creativity": 50, "helpfulness": 88}


def prism_conversation(cid: str, uid: str, turns: list[tuple[str, list[tuple[str, bool]]]]) -> dict:
    """One conversations.jsonl row; ``turns`` = [(user text, [(model text, if_chosen), ...]), ...]."""
    hist = []
    providers = [("huggingface_api", "google/flan-t5-xxl"), ("cohere", "command-light"), ("openai", "gpt-4"), ("anthropic", "claude-2.1")]
    for t, (user, models) in enumerate(turns):
        hist.append({"turn": t, "role": "user", "content": user})
        for j, (text, chosen) in enumerate(models):
            prov, model = providers[j % 4]
            hist.append(
                {
                    "turn": t,
                    "role": "model",
                    "content": text,
                    "model_provider": prov,
                    "model_name": model,
                    "score": 90 if chosen else 20 + j,
                    "if_chosen": chosen,
                    "within_turn_id": j,
                }
            )
    return {
        "conversation_id": cid,
        "user_id": uid,
        "conversation_type": "unguided",
        "opening_prompt": turns[0][0],
        "conversation_turns": len(turns),
        "conversation_history": hist,
        "performance_attributes": ATTRS,
        "choice_attributes": dict(ATTRS, safety=None),
        "open_feedback": "Good answers but could be more specific.",
        "generated_datetime": "2023-11-22 15:55:46",
        "timing_duration_s": 300.5,
        "timing_duration_mins": 5.01,
        "included_in_balanced_subset": False,
    }


def survey_row(uid: str, n: int) -> dict:
    return {
        "user_id": uid,
        "num_completed_conversations": n,
        "self_description": "I like hiking.",
        "system_string": "Be concise.",
        "age": "25-34 years old",
        "gender": "Female",
        "education": "University Bachelors Degree",
        "employment_status": "Working full-time",
        "marital_status": "Never been married",
        "english_proficiency": "Native speaker",
        "stated_prefs": {"values": 50, "fluency": 80, "factuality": 90, "safety": 70, "diversity": 30, "creativity": 40, "helpfulness": 95},
        "order_stated_prefs": {"values": 4, "fluency": 3, "factuality": 2, "safety": 5, "diversity": 7, "creativity": 6, "helpfulness": 1},
    }


def _plain(uid: str, k: int) -> tuple[dict, list[tuple]]:
    cid = f"{uid}-c{k}"
    q, a, b = f"{uid} question {k}?", f"{uid} good answer {k}.", f"{uid} weak answer {k}."
    conv = prism_conversation(cid, uid, [(q, [(a, True), (b, False)])])
    return conv, [(uid, cid, f"{cid}/t0/r0", [{"role": "user", "content": q}], a, b, "")]


def write_prism(directory: Path, survey: bool = True) -> tuple[Path, list[tuple], list[tuple]]:
    """Returns (dir, expected pairs with empty=keep, expected pairs with empty=drop)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    convs: list[dict] = []
    expected: list[tuple] = []
    # u1, conversation c0: several if_chosen, EMPTY STRING, a non-qualifying turn in the middle.
    u = "u1"
    convs.append(
        prism_conversation(
            "u1-c0",
            u,
            [
                ("What is a good first pet?", [("A goldfish.", True), ("EMPTY STRING", False), ("A dragon.", False), ("A cat.", True)]),
                ("Why a goldfish?", [("Low maintenance.", True), ("No reason.", False)]),
                ("Thanks!", [("You're welcome.", True)]),  # no rejected response: does not qualify
                ("Anything else?", [("Buy a bowl.", True), ("Buy a tiger.", False)]),
            ],
        )
    )
    p0 = [{"role": "user", "content": "What is a good first pet?"}]
    p1 = [*p0, {"role": "assistant", "content": "A goldfish."}, {"role": "user", "content": "Why a goldfish?"}]
    p3 = [*p1, {"role": "assistant", "content": "Low maintenance."}, {"role": "user", "content": "Anything else?"}]
    expected += [
        (u, "u1-c0", "u1-c0/t0/r0", p0, "A goldfish.", "EMPTY STRING", ""),
        (u, "u1-c0", "u1-c0/t0/r1", p0, "A goldfish.", "A dragon.", ""),
        (u, "u1-c0", "u1-c0/t1/r0", p1, "Low maintenance.", "No reason.", ""),
        (u, "u1-c0", "u1-c0/t3/r0", p3, "Buy a bowl.", "Buy a tiger.", ""),
    ]
    # u1, c1: a rejected response identical to the chosen one (no preference) next to a real one.
    convs.append(prism_conversation("u1-c1", u, [("Say hi.", [("Hi!", True), ("Hi!", False), ("Go away.", False)])]))
    expected.append((u, "u1-c1", "u1-c1/t0/r1", [{"role": "user", "content": "Say hi."}], "Hi!", "Go away.", ""))
    for k in range(2, 6):
        c, e = _plain(u, k)
        convs.append(c)
        expected += e
    # u2: six conversations, one without a qualifying turn → 5 < 6: dropped.
    for k in range(5):
        convs.append(_plain("u2", k)[0])
    convs.append(prism_conversation("u2-c5", "u2", [("Hello?", [("Hello.", True)])]))
    # u3: seven plain conversations, kept.
    for k in range(7):
        c, e = _plain("u3", k)
        convs.append(c)
        expected += e
    # u4: the survey says no completed conversation (skipped as MRM does).
    convs.append(_plain("u4", 0)[0])
    # u5: three conversations, below the threshold.
    for k in range(3):
        convs.append(_plain("u5", k)[0])
    with open(directory / "conversations.jsonl", "w") as f:
        for c in convs:
            f.write(json.dumps(c) + "\n")
    if survey:
        with open(directory / "survey.jsonl", "w") as f:
            for uid, n in (("u1", 6), ("u2", 6), ("u3", 7), ("u4", 0), ("u5", 3), ("u6", 0)):
                f.write(json.dumps(survey_row(uid, n)) + "\n")
    dropped = [e for e in expected if e[5] == "EMPTY STRING" or e[4] == "EMPTY STRING"]
    return directory, expected, [e for e in expected if e not in dropped]


# ---------------------------------------------------------------------------- Reddit TL;DR


def reddit_row(worker: str, post_id: str, post: str | None, s0: str, s1: str, choice: int, split: str, raw: bool = True, article: str | None = None) -> dict:
    """A comparisons row; ``raw`` omits absent keys (OpenAI's files), else every key with nulls (Hub)."""
    info = {"id": post_id, "post": post, "title": f"Title of {post_id}", "subreddit": "legaladvice", "site": None, "article": None}
    if article is not None:
        info = {"id": post_id, "post": None, "title": f"Title of {post_id}", "subreddit": None, "site": "dailymail", "article": article}
    summaries = [{"text": s0, "policy": "sup4_ppo_rm3_kl10", "note": None}, {"text": s1, "policy": "ref", "note": None}]
    row = {"info": info, "summaries": summaries, "choice": choice, "worker": worker, "batch": "batch9", "split": split, "extra": {"confidence": 7}}
    if raw:
        row["info"] = {k: v for k, v in info.items() if v is not None}
        row["summaries"] = [{k: v for k, v in s.items() if v is not None} for s in summaries]
    return row


def reddit_rows(raw: bool = True) -> tuple[list[dict], list[tuple]]:
    R = lambda *a, **k: reddit_row(*a, raw=raw, **k)  # noqa: E731
    rows = [
        R("w1", "t3_a", "My landlord kept my deposit.", " landlord kept deposit", " deposit withheld, advice?", 0, "train"),
        R("w1", "t3_b", "My cat ignores me.", " cat ignores me", " feline indifference", 1, "train"),
        R("w1", "t3_a", "My landlord kept my deposit.", " landlord kept deposit", " deposit withheld, advice?", 0, "train"),  # verbatim repeat
        R("w1", "t3_c", "I failed my exam.", " failed exam, sad", " exam failed", 0, "valid1"),
        R("w1", "cnn_1", None, " storm hits coast", " coast storm", 0, "valid2", article="A storm hit the coast."),  # CNN/DM
        R("w1", "t3_d", "Bought a car.", " same text", " same text", 0, "valid2"),  # identical summaries
        R("w2", "t3_e", "Moving abroad soon.", " moving abroad", "   ", 0, "train"),  # empty summary
        R("w2", "t3_f", "Learning to cook.", " learning cooking", " cooking lessons", 1, "train"),
        R("w2", "t3_g", "My bike was stolen.", " bike stolen", " lost bike", 0, "valid2"),
        R("w3", "t3_h", "New job tomorrow.", " new job", " job starts", 0, "train"),  # w3: train only
        R("w4", "cnn_2", None, " markets fall", " stocks drop", 1, "valid1", article="Markets fell today."),  # w4: only CNN/DM
        R("w4", "t3_i", "Planting tomatoes.", " tomatoes", " planting", 0, "train"),
    ]
    user = lambda p: [{"role": "user", "content": p}]  # noqa: E731
    expected = [
        ("w1", "t3_a", user("My landlord kept my deposit."), " landlord kept deposit", " deposit withheld, advice?", "train"),
        ("w1", "t3_b", user("My cat ignores me."), " feline indifference", " cat ignores me", "train"),
        ("w1", "t3_c", user("I failed my exam."), " failed exam, sad", " exam failed", "test"),
        ("w2", "t3_f", user("Learning to cook."), " cooking lessons", " learning cooking", "train"),
        ("w2", "t3_g", user("My bike was stolen."), " bike stolen", " lost bike", "test"),
    ]
    return rows, expected


def write_reddit_raw(directory: Path) -> tuple[Path, list[tuple]]:
    rows, expected = reddit_rows(raw=True)
    d = Path(directory) / "comparisons"
    d.mkdir(parents=True, exist_ok=True)
    with open(d / "batch9.json", "w") as f:
        for r in rows[:6]:
            f.write(json.dumps(r) + "\n")
    with open(d / "batch10.json", "w") as f:
        for r in rows[6:]:
            f.write(json.dumps(r) + "\n")
    return Path(directory), expected


def write_reddit_parquet(directory: Path) -> tuple[Path, list[tuple]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows, expected = reddit_rows(raw=False)
    info_t = pa.struct([(k, pa.string()) for k in ("id", "post", "title", "subreddit", "site", "article")])
    summ_t = pa.list_(pa.struct([("text", pa.string()), ("policy", pa.string()), ("note", pa.string())]))
    schema = pa.schema(
        [("info", info_t), ("summaries", summ_t), ("choice", pa.int32()), ("worker", pa.string()), ("batch", pa.string()), ("split", pa.string()), ("extra", pa.struct([("confidence", pa.int32())]))]
    )
    for hf_split, keep in (("train", ("train",)), ("validation", ("valid1", "valid2"))):
        part = [r for r in rows if r["split"] in keep]
        d = Path(directory) / "comparisons" / hf_split
        d.mkdir(parents=True, exist_ok=True)
        pq.write_table(pa.Table.from_pylist(part, schema=schema), d / "0000.parquet")
    return Path(directory), expected

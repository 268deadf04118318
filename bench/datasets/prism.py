"""PRISM alignment conversations (``HannahRoseKirk/prism-alignment``).

A local directory (``--dataset prism:data_dir=DIR`` or ``$BENCH_PRISM_DIR``) holds the Hub's raw
files ``conversations.jsonl`` (required) and ``survey.jsonl`` (optional, recommended), or the
Parquet conversion (``conversations/train/*.parquet``, ``survey/train/*.parquet``).

Pairs follow MRM's ``scripts/preprocess_prism.py``:

* users whose survey row says ``num_completed_conversations == 0`` are skipped (as are
  conversations of users missing from the survey, when a survey is given);
* a turn *qualifies* when it has a user message, a chosen response and at least one rejected one;
  a conversation with no qualifying turn is dropped; users with fewer than ``min_conversations``
  (default 6) remaining conversations are dropped;
* each qualifying turn yields one pair per rejected response; the prompt is the history of the
  earlier *qualifying* turns as ``[user, assistant(chosen)]*`` followed by the turn's user message
  (a turn that does not qualify is absent from later prompts, as in MRM). Role ``model`` becomes
  ``assistant``; every content is a string.

Stated rules (tested in ``tests/test_real_datasets.py``):

* **several ``if_chosen``** in one turn (≈265 turns): the first in file order (lowest
  ``within_turn_id``) is the chosen response; the other chosen-marked responses are neither chosen
  nor rejected (MRM keeps only ``chosen_utterance[0]``), and are counted;
* **"EMPTY STRING"** (the dataset's marker of an empty model reply): ``empty=keep`` (default, MRM's
  pairs: the literal text is embedded) or ``empty=drop`` (pairs with an empty side are removed
  after the user filter, so the user set stays MRM's; the chosen text stays in later prompts);
* a pair whose chosen and rejected texts are identical is removed (no preference), counted;
* a repeated ``conversation_id`` stops the load (a duplicated or concatenated file).
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench.data import Dataset
from bench.datasets.sources import FEATURE_OPTIONS, LOCAL_OPTIONS, HubSource, check_options, iter_json_lines, iter_parquet_rows, resolve_directory, stamped_digest
from bench.datasets.textdata import attach_features, build_text_dataset, spec_string
from bench.errors import DataError
from bench.hashing import hash_obj

LOADER_VERSION = "1"
EMPTY = "EMPTY STRING"

SOURCE = HubSource(
    name="prism",
    repo="HannahRoseKirk/prism-alignment",
    revision="main",
    patterns=("conversations.jsonl", "survey.jsonl"),
    manual="Download conversations.jsonl and survey.jsonl from the dataset HannahRoseKirk/prism-alignment (Files tab).",
)


def _files(directory: Path) -> dict[str, list[Path]]:
    out: dict[str, list[Path]] = {}
    for stem in ("conversations", "survey"):
        if (directory / f"{stem}.jsonl").is_file():
            out[stem] = [directory / f"{stem}.jsonl"]
        else:
            pq = sorted((directory / stem).rglob("*.parquet")) if (directory / stem).is_dir() else []
            if pq:
                out[stem] = pq
    return out


def _missing(directory: Path) -> str | None:
    return None if "conversations" in _files(directory) else "no conversations.jsonl (nor conversations/train/*.parquet)"


def _rows(paths: list[Path], directory: Path):
    for p in paths:
        it = iter_parquet_rows(p) if p.suffix == ".parquet" else iter_json_lines(p)
        for line, row in it:
            yield f"{p.relative_to(directory)} {'row' if p.suffix == '.parquet' else 'line'} {line}", row


ROW_HINT = (
    "the row does not follow the schema of HannahRoseKirk/prism-alignment (README § Real datasets); "
    "fix that row or download the file again"
)


def load(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    try:
        return _load(name, options, config)
    except DataError as e:
        e.hint = e.hint or ROW_HINT
        raise


def _load(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    check_options("prism", options, LOCAL_OPTIONS + FEATURE_OPTIONS + ("min_conversations", "empty"))
    directory, origin = resolve_directory("prism", options, SOURCE, _missing)
    files = _files(directory)
    raw_min = options.get("min_conversations", config.get("min_conversations", 6))
    if isinstance(raw_min, bool) or not isinstance(raw_min, (int, float)) or raw_min != int(raw_min):
        raise DataError(f"prism: min_conversations={raw_min!r} is not an integer", hint="prism:min_conversations=N with N ≥ 1 (default 6)")
    min_conv = int(raw_min)
    empty = str(options.get("empty", config.get("empty", "keep"))).lower()
    if empty not in ("keep", "drop"):
        raise DataError(f"prism: empty={empty!r} is not keep or drop", hint="prism:empty=keep (MRM) or prism:empty=drop")
    if min_conv < 1:
        raise DataError(f"prism: min_conversations must be ≥ 1, got {min_conv}", hint="prism:min_conversations=N with N ≥ 1 (default 6)")
    dropped: Counter[str] = Counter()
    info: Counter[str] = Counter()

    survey_ok: dict[str, bool] | None = None
    if "survey" in files:
        survey_ok = {}
        for where, row in _rows(files["survey"], directory):
            uid, n = row.get("user_id"), row.get("num_completed_conversations")
            if not isinstance(uid, str) or not uid:
                raise DataError(f"prism {where}: 'user_id' must be a non-empty string, got {uid!r}")
            if isinstance(n, bool) or not isinstance(n, (int, float)):
                raise DataError(f"prism {where}: 'num_completed_conversations' must be a number, got {n!r}")
            if uid in survey_ok:
                raise DataError(f"prism {where}: user_id {uid!r} appears twice in the survey", hint="the file is duplicated or concatenated; download it again")
            survey_ok[uid] = n != 0

    conversations: dict[str, list[dict]] = {}  # user → qualifying conversations (file order)
    seen_ids: set[str] = set()
    n_rows = 0
    for where, row in _rows(files["conversations"], directory):
        n_rows += 1
        conv_id, user, turns = parse_conversation(row, where)
        if conv_id in seen_ids:
            raise DataError(f"prism {where}: conversation_id {conv_id!r} appears twice", hint="the file is duplicated or concatenated; download it again")
        seen_ids.add(conv_id)
        if survey_ok is not None and user not in survey_ok:
            dropped["conversations of users absent from the survey"] += 1
            continue
        if survey_ok is not None and not survey_ok[user]:
            dropped["conversations of users with no completed conversation in the survey"] += 1
            continue
        qualifying = []
        for t in turns:
            info["extra chosen responses ignored (turns with several if_chosen)"] += max(0, len(t["chosen"]) - 1)
            if t["user"] and t["chosen"] and t["rejected"]:
                qualifying.append(t)
        if not qualifying:
            dropped["conversations without a turn that has a chosen and a rejected response"] += 1
            continue
        conversations.setdefault(user, []).append({"id": conv_id, "turns": qualifying})

    small = [u for u, cs in conversations.items() if len(cs) < min_conv]
    dropped[f"conversations of users with fewer than {min_conv} conversations"] += sum(len(conversations[u]) for u in small)
    info[f"users with fewer than {min_conv} conversations"] = len(small)
    for u in small:
        del conversations[u]

    rec: dict[str, list] = {k: [] for k in ("user", "group", "pair_id", "source_split", "prompt", "chosen_text", "rejected_text")}
    for user, convs in conversations.items():
        for conv in convs:
            history: list[dict[str, str]] = []
            for t in conv["turns"]:
                user_msg = t["user"][0]
                chosen = t["chosen"][0]
                prompt = [*history, {"role": "user", "content": user_msg}]
                for k, rejected in enumerate(t["rejected"]):
                    is_empty = _is_empty(chosen) or _is_empty(rejected)
                    if is_empty:
                        info["pairs with an EMPTY STRING side"] += 1
                        if empty == "drop":
                            dropped["pairs with an EMPTY STRING side (empty=drop)"] += 1
                            continue
                    if chosen == rejected:
                        dropped["pairs whose chosen and rejected texts are identical"] += 1
                        continue
                    rec["user"].append(user)
                    rec["group"].append(conv["id"])
                    rec["pair_id"].append(f"{conv['id']}/t{t['turn']}/r{k}")
                    rec["source_split"].append("")
                    rec["prompt"].append(list(prompt))
                    rec["chosen_text"].append(chosen)
                    rec["rejected_text"].append(rejected)
                history = [*prompt, {"role": "assistant", "content": chosen}]
    if n_rows == 0:
        raise DataError(f"prism: {files['conversations'][0]} holds no conversations", hint="download it again")
    filters = {"min_conversations": min_conv, "empty": empty, "survey": "survey" in files}
    fp = hash_obj(
        {
            "loader": "prism",
            "version": LOADER_VERSION,
            "files": {str(p.relative_to(directory)): stamped_digest(p) for ps in files.values() for p in ps},
            "filters": filters,
        },
        size=12,
    )
    meta = {
        "source": f"{SOURCE.repo} ({origin}: {directory})",
        "revision": (directory / "SOURCE.txt").read_text().strip() if (directory / "SOURCE.txt").exists() else None,
        "filters": filters,
        "rows_read": n_rows,
        "dropped": {k: int(v) for k, v in sorted(dropped.items()) if v},
        "notes": {k: int(v) for k, v in sorted(info.items()) if v},
        "spec": spec_string("prism", options),
        "text_fingerprint": fp,
    }
    if not rec["user"]:
        raise DataError(
            f"prism: no user has {min_conv} or more qualifying conversations",
            hint="check the files, or lower the threshold with prism:min_conversations=N",
        )
    ds = build_text_dataset(
        name,
        rec,
        family=config.get("family", "prism"),
        split_by="group",
        fingerprint=fp,
        defaults={k: config[k] for k in ("shots", "unseen_shots") if k in config},
        meta=meta,
    )
    return attach_features(ds, options, config)


def _is_empty(text: str) -> bool:
    return text == EMPTY or not text.strip()


def parse_conversation(row: dict[str, Any], where: str) -> tuple[str, str, list[dict]]:
    """(conversation id, user id, turns in order) with each turn's user messages, chosen and
    rejected responses in file order."""
    for key in ("conversation_id", "user_id", "conversation_history"):
        if key not in row:
            raise DataError(f"prism {where}: missing key '{key}'", hint="conversations.jsonl rows need conversation_id, user_id, conversation_history")
    conv_id, user, hist = row["conversation_id"], row["user_id"], row["conversation_history"]
    for key, v in (("conversation_id", conv_id), ("user_id", user)):
        if not isinstance(v, str) or not v:
            raise DataError(f"prism {where}: '{key}' must be a non-empty string, got {v!r}")
    if not isinstance(hist, (list, tuple)):
        raise DataError(f"prism {where}: 'conversation_history' must be a list, got {type(hist).__name__}")
    turns: dict[int, dict] = {}
    for j, item in enumerate(hist):
        w = f"prism {where} conversation_history[{j}]"
        if not isinstance(item, dict):
            raise DataError(f"{w}: must be an object")
        for key in ("turn", "role", "content"):
            if key not in item:
                raise DataError(f"{w}: missing key '{key}'")
        turn, role, content = item["turn"], item["role"], item["content"]
        if isinstance(turn, bool) or not isinstance(turn, int) or turn < 0:
            raise DataError(f"{w}: 'turn' must be a non-negative integer, got {turn!r}")
        if not isinstance(content, str):
            raise DataError(
                f"{w}: 'content' must be a string, got {type(content).__name__}",
                hint="a message's content is one string; lists would leak format into the reward model",
            )
        t = turns.setdefault(turn, {"turn": turn, "user": [], "chosen": [], "rejected": []})
        if role == "user":
            t["user"].append(content)
        elif role == "model":
            chosen = item.get("if_chosen")
            if not isinstance(chosen, bool):
                raise DataError(f"{w}: a model response needs a boolean 'if_chosen', got {chosen!r}")
            (t["chosen"] if chosen else t["rejected"]).append(content)
        else:
            raise DataError(f"{w}: unknown role {role!r}", hint="roles are 'user' and 'model'")
    return conv_id, user, [turns[k] for k in sorted(turns)]

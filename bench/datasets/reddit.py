"""Reddit TL;DR human comparisons (``openai/summarize_from_feedback``, config ``comparisons``).

Accepted layouts of a local directory (``--dataset reddit:data_dir=DIR`` or ``$BENCH_REDDIT_DIR``):

* the original OpenAI files: ``batch*.json`` anywhere below DIR (e.g. ``comparisons/batch3.json``),
  one JSON object per line, absent keys omitted;
* the Hub's Parquet conversion (revision ``refs/convert/parquet``): ``*.parquet`` below DIR, e.g.
  ``comparisons/train/0000.parquet`` and ``comparisons/validation/0000.parquet``;
* JSON lines exported from ``datasets`` (``train.jsonl``, ``validation.jsonl``): any ``*.jsonl``.

Pairs follow MRM's ``scripts/preprocess_reddit.py``: prompt = ``info.post`` as one user message,
chosen = ``summaries[choice].text``, rejected = the other summary, user = ``worker``, source split
= the row's ``split`` (``train`` → train half; ``valid1``/``valid2``, the Hub's validation split →
test half); only workers present in both halves are kept (the paper's 40 users).

Stated rules where the files need one (each counted in ``Dataset.meta["dropped"]``):

* rows whose ``info.post`` is null (the CNN/DM articles of the validation split) are skipped;
* rows whose post or a summary is empty or blank are skipped;
* rows whose two summaries are the same text are skipped (no preference is expressed);
* a judgement repeated verbatim (same worker, post, half, chosen and rejected text) is kept once;
* structural errors — malformed JSON, a missing key, a wrong type, ``choice`` outside {0, 1},
  an unknown ``split`` value — stop the load with the file and line.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from bench.data import Dataset
from bench.datasets.sources import FEATURE_OPTIONS, LOCAL_OPTIONS, HubSource, check_options, iter_json_lines, iter_parquet_rows, resolve_directory, stamped_digest
from bench.datasets.textdata import attach_features, build_text_dataset, spec_string
from bench.errors import DataError
from bench.hashing import digest, hash_obj

LOADER_VERSION = "1"
SPLITS = {"train": "train", "valid1": "test", "valid2": "test", "validation": "test", "test": "test"}
HUB_SPLIT_OF_PATH = {"train": "train", "validation": "test"}

SOURCE = HubSource(
    name="reddit",
    repo="openai/summarize_from_feedback",
    revision="refs/convert/parquet",
    patterns=("comparisons/*/*.parquet", "comparisons/*.parquet"),
    manual=(
        "Download the comparisons of openai/summarize_from_feedback: either the Hub's Parquet "
        "conversion (branch refs/convert/parquet, folder comparisons/: train/ and validation/ "
        "*.parquet) or OpenAI's original comparisons/batch*.json files (see the "
        "openai/summarize-from-feedback repository)."
    ),
)
COLUMNS = ["info", "summaries", "choice", "worker", "split"]


def layout(directory: Path) -> tuple[str, list[Path]] | str:
    parquet = sorted(p for p in directory.rglob("*.parquet") if not p.name.startswith("."))
    raw = sorted(p for p in directory.rglob("batch*.json") if not p.name.startswith("."))
    jsonl = sorted(p for p in directory.rglob("*.jsonl") if not p.name.startswith("."))
    found = [(k, v) for k, v in (("parquet", parquet), ("json", raw), ("jsonl", jsonl)) if v]
    if not found:
        return "no *.parquet, batch*.json or *.jsonl files"
    if len(found) > 1:
        return f"several layouts at once ({', '.join(k for k, _ in found)}); keep one of them"
    return found[0]


def _missing(directory: Path) -> str | tuple[str, str] | None:
    lay = layout(directory)
    if isinstance(lay, str) and lay.startswith("several layouts"):
        return lay, (
            f"nothing is missing: move all but one kind of file out of {directory} (bench reads the "
            "Parquet conversion, OpenAI's batch*.json, or *.jsonl — one of them per directory)"
        )
    return lay if isinstance(lay, str) else None


ROW_HINT = (
    "the row does not follow the comparisons schema of openai/summarize_from_feedback "
    "(README § Real datasets); fix that row or download the file again"
)


def load(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    try:
        return _load(name, options, config)
    except DataError as e:
        e.hint = e.hint or ROW_HINT
        raise


def _load(name: str, options: dict[str, Any], config: dict[str, Any]) -> Dataset:
    check_options("reddit", options, LOCAL_OPTIONS + FEATURE_OPTIONS)
    directory, origin = resolve_directory("reddit", options, SOURCE, _missing)
    kind, files = layout(directory)  # type: ignore[misc]
    dropped: Counter[str] = Counter()
    rec: dict[str, list] = {k: [] for k in ("user", "group", "pair_id", "source_split", "prompt", "chosen_text", "rejected_text")}
    seen: set[str] = set()
    n_rows = 0
    for path in files:
        rows = iter_parquet_rows(path, COLUMNS) if kind == "parquet" else iter_json_lines(path)
        path_split = _split_of_path(path, directory)
        for line, row in rows:
            n_rows += 1
            parsed = parse_row(row, f"{path.relative_to(directory)} {'row' if kind == 'parquet' else 'line'} {line}", path_split)
            if isinstance(parsed, str):
                dropped[parsed] += 1
                continue
            worker, post_id, post, chosen, rejected, half = parsed
            pid = digest("\x00".join((worker, post_id, half, chosen, rejected)), size=8)
            if pid in seen:
                dropped["judgement repeated verbatim (kept once)"] += 1
                continue
            seen.add(pid)
            rec["user"].append(worker)
            rec["group"].append(f"{worker}:{post_id}:{half}")
            rec["pair_id"].append(pid)
            rec["source_split"].append(half)
            rec["prompt"].append([{"role": "user", "content": post}])
            rec["chosen_text"].append(chosen)
            rec["rejected_text"].append(rejected)
    if n_rows == 0:
        raise DataError(f"reddit: the files in {directory} hold no rows", hint="download them again")
    # Workers present in both halves (MRM: common workers of the train and validation splits).
    halves: dict[str, set[str]] = {}
    for u, h in zip(rec["user"], rec["source_split"]):
        halves.setdefault(u, set()).add(h)
    keep_users = {u for u, h in halves.items() if len(h) == 2}
    if rec["user"] and not keep_users:
        present = sorted({h for hs in halves.values() for h in hs})
        gone = {"train": "train", "test": "validation"}
        absent = [gone[h] for h in ("train", "test") if h not in present]
        raise DataError(
            f"reddit: no worker is in both halves (train and validation) of {directory}"
            + (f": no row is in the {' or '.join(absent)} split" if absent else ""),
            hint=(
                f"add the {' and '.join(absent)} comparisons beside the others "
                "(Parquet conversion: comparisons/train/*.parquet and comparisons/validation/*.parquet; "
                "OpenAI's batch*.json hold both)"
            ) if absent else "the train and validation comparisons must come from the same release",
        )
    keep = [i for i, u in enumerate(rec["user"]) if u in keep_users]
    dropped["pairs of workers absent from one of the two halves"] += len(rec["user"]) - len(keep)
    rec = {k: [v[i] for i in keep] for k, v in rec.items()}
    filters = {"workers": "in both halves", "skip": ["null post", "empty text", "identical summaries", "repeated judgement"]}
    fp = hash_obj(
        {"loader": "reddit", "version": LOADER_VERSION, "files": {str(p.relative_to(directory)): stamped_digest(p) for p in files}, "filters": filters},
        size=12,
    )
    meta = {
        "source": f"{SOURCE.repo} ({kind} files, {origin}: {directory})",
        "revision": _revision(directory),
        "filters": filters,
        "rows_read": n_rows,
        "dropped": {k: int(v) for k, v in sorted(dropped.items()) if v},
        "spec": spec_string("reddit", options),
        "text_fingerprint": fp,
    }
    ds = build_text_dataset(
        name,
        rec,
        family=config.get("family", "reddit"),
        split_by="source",
        fingerprint=fp,
        defaults={k: config[k] for k in ("shots", "unseen_shots") if k in config},
        meta=meta,
    )
    return attach_features(ds, options, config)


def _split_of_path(path: Path, root: Path) -> str | None:
    for part in path.relative_to(root).parts[:-1] + (path.stem,):
        low = part.lower()
        for key, half in HUB_SPLIT_OF_PATH.items():
            if low == key or low.startswith(key + "-") or low.startswith(key + "."):
                return half
    return None


def _revision(directory: Path) -> str | None:
    f = directory / "SOURCE.txt"
    return f.read_text().strip() if f.exists() else None


def parse_row(row: dict[str, Any], where: str, path_split: str | None):
    """(worker, post id, post, chosen, rejected, half) or the reason the row is skipped."""
    for key in ("info", "summaries", "choice", "worker"):
        if key not in row:
            raise DataError(f"reddit {where}: missing key '{key}'", hint="every comparison needs info, summaries, choice, worker")
    info, summaries, choice, worker = row["info"], row["summaries"], row["choice"], row["worker"]
    if not isinstance(info, dict):
        raise DataError(f"reddit {where}: 'info' must be an object, got {type(info).__name__}")
    if not isinstance(worker, str) or not worker.strip():
        raise DataError(f"reddit {where}: 'worker' must be a non-empty string, got {worker!r}")
    if isinstance(choice, bool) or not isinstance(choice, int) or choice not in (0, 1):
        raise DataError(f"reddit {where}: 'choice' must be 0 or 1, got {choice!r}", hint="choice indexes the two summaries")
    if not isinstance(summaries, (list, tuple)) or len(summaries) != 2:
        raise DataError(f"reddit {where}: 'summaries' must be a list of two summaries")
    texts = []
    for j, s in enumerate(summaries):
        if not isinstance(s, dict) or "text" not in s:
            raise DataError(f"reddit {where}: summaries[{j}] must be an object with a 'text'")
        if not isinstance(s["text"], str):
            raise DataError(f"reddit {where}: summaries[{j}].text must be a string, got {type(s['text']).__name__}")
        texts.append(s["text"])
    raw_split = row.get("split")
    if raw_split is None:
        if path_split is None:
            raise DataError(f"reddit {where}: missing key 'split' and the file path names no split", hint="rows need split train/valid1/valid2")
        half = path_split
    else:
        if not isinstance(raw_split, str) or raw_split not in SPLITS:
            raise DataError(f"reddit {where}: unknown split {raw_split!r}", hint=f"expected one of {sorted(SPLITS)}")
        half = SPLITS[raw_split]
    post = info.get("post")
    if post is None:
        return "rows without a post (CNN/DM articles)"
    if not isinstance(post, str):
        raise DataError(f"reddit {where}: info.post must be a string or null, got {type(post).__name__}")
    if not post.strip() or not texts[0].strip() or not texts[1].strip():
        return "rows with an empty post or summary"
    if texts[0] == texts[1]:
        return "rows whose two summaries are the same text"
    post_id = info.get("id")
    if not isinstance(post_id, str) or not post_id:
        post_id = "h" + digest(post, size=8)
    return worker, post_id, post, texts[choice], texts[1 - choice], half

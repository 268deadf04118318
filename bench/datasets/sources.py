"""Where the original files of a real dataset come from: a local directory or the Hugging Face Hub.

Resolution order for a dataset ``NAME`` (``reddit``, ``prism``):

1. the ``data_dir=`` option of the dataset spec (``--dataset reddit:data_dir=/data/tldr``);
2. the environment variable ``BENCH_<NAME>_DIR`` (``BENCH_REDDIT_DIR``, ``BENCH_PRISM_DIR``);
3. a previous Hub download in ``$BENCH_CACHE/raw/<name>``;
4. a download from the Hub into that folder (best effort: ``huggingface_hub`` must be installed and
   the Hub reachable). Offline, this step fails at once — ``HF_HUB_OFFLINE=1`` is honoured and the
   Hub's host is probed with a 3-second connect before anything else — with a message that says
   which files to fetch and where to put them. There are no retry loops.

Nothing here runs at import time.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from bench.errors import DataError, json_error

HUB = "https://huggingface.co"
PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class HubSource:
    """How to fetch a dataset's original files from the Hub, and how to tell a user to do it."""

    name: str
    repo: str
    revision: str  # a branch, tag or ref such as "refs/convert/parquet"
    patterns: tuple[str, ...]  # files (glob patterns) to download from that revision
    manual: str  # what to download by hand, in words


# Options every text dataset with cached features accepts (bench/datasets/textdata.py).
FEATURE_OPTIONS = ("features", "feature_key")
LOCAL_OPTIONS = ("data_dir", "hub")


def check_options(name: str, options: dict, allowed: tuple[str, ...]) -> None:
    """A dataset option the loader does not read is a typo that would silently change nothing."""
    import difflib

    for key in options:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            raise DataError(
                f"{name}: unknown dataset option '{key}'" + (f"; did you mean '{close[0]}'?" if close else ""),
                hint=f"{name} options: {', '.join(allowed) or '(none)'}",
            )


def cache_root() -> Path:
    return Path(os.environ.get("BENCH_CACHE", Path.home() / ".cache" / "bench"))


def env_var(name: str) -> str:
    return "BENCH_" + name.upper().replace("-", "_") + "_DIR"


def hub_unreachable_reason() -> str | None:
    """Why the Hub cannot be used right now (None if it looks reachable). Never blocks > 3 s."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return "HF_HUB_OFFLINE is set"
    try:
        import huggingface_hub  # noqa: F401
    except ImportError:
        return "the 'huggingface_hub' package is not installed (pip install 'bench-prm[hub]')"
    if any(os.environ.get(k) for k in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return None  # a proxy decides; the download itself reports failures
    url = urlparse(os.environ.get("HF_ENDPOINT", HUB))
    host = url.hostname or "huggingface.co"
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            return None
    except OSError as e:
        return f"cannot connect to {host}:{port} ({e.__class__.__name__}: {e})"


def resolve_directory(name: str, options: dict, source: HubSource, has_files) -> tuple[Path, str]:
    """The directory holding ``name``'s original files and how it was found (``local``/``hub``).

    ``has_files(directory) -> str | None`` returns None when the directory holds a usable layout,
    otherwise a sentence saying what is missing — or ``(sentence, fix)`` when the fix is not to
    download the files (e.g. a directory holding two layouts at once).
    """
    given = options.get("data_dir")
    var = env_var(name)
    where = None
    if given not in (None, ""):
        where = (Path(str(given)).expanduser(), f"data_dir={given}")
    elif os.environ.get(var):
        where = (Path(os.environ[var]).expanduser(), f"${var}")
    if where is not None:
        directory, label = where
        if not directory.is_dir():
            raise DataError(f"{name}: {label} is not a directory: {directory}", hint=_how_to_get(name, source))
        missing = has_files(directory)
        if missing:
            missing, fix = missing if isinstance(missing, tuple) else (missing, _how_to_get(name, source))
            raise DataError(f"{name}: {directory} ({label}) does not hold the expected files: {missing}", hint=fix)
        return directory, "local"
    cached = cache_root() / "raw" / name
    if cached.is_dir() and has_files(cached) is None:
        return cached, "hub"
    if options.get("hub", True) in (False, "false", "no", 0):
        raise DataError(f"{name}: no local copy of the original files and hub=false", hint=_how_to_get(name, source))
    reason = hub_unreachable_reason()
    if reason:
        raise DataError(
            f"{name}: no local copy of the original files, and the Hugging Face Hub cannot be used: {reason}",
            hint=_how_to_get(name, source),
        )
    _download(source, cached)
    missing = has_files(cached)
    if missing:
        missing, fix = missing if isinstance(missing, tuple) else (missing, _how_to_get(name, source))
        raise DataError(f"{name}: the Hub download into {cached} is incomplete: {missing}", hint=fix)
    return cached, "hub"


def _how_to_get(name: str, source: HubSource) -> str:
    return (
        f"{source.manual} Put them in a directory DIR and run with `--dataset {name}:data_dir=DIR` "
        f"(or `export {env_var(name)}=DIR`); with network access, leave both unset and the files are "
        f"downloaded once into {cache_root() / 'raw' / name}."
    )


def _download(source: HubSource, dest: Path) -> None:
    """Download the matching files of ``source`` into ``dest`` (atomic per file, via huggingface_hub)."""
    import fnmatch

    from huggingface_hub import HfApi, hf_hub_download

    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "30")
    try:
        files = HfApi().list_repo_files(source.repo, repo_type="dataset", revision=source.revision)
        wanted = sorted(f for f in files if any(fnmatch.fnmatch(f, p) for p in source.patterns))
        if not wanted:
            raise DataError(f"{source.repo}@{source.revision} has no files matching {list(source.patterns)}")
        dest.mkdir(parents=True, exist_ok=True)
        for f in wanted:
            hf_hub_download(source.repo, f, repo_type="dataset", revision=source.revision, local_dir=dest)
        commit = HfApi().dataset_info(source.repo, revision=source.revision).sha
        (dest / "SOURCE.txt").write_text(f"{source.repo}@{source.revision} commit {commit}\n")
    except DataError:
        raise
    except Exception as e:  # network, auth, missing repo: one clear message, no traceback
        raise DataError(
            f"{source.name}: downloading {source.repo}@{source.revision} failed: {type(e).__name__}: {e}",
            hint=_how_to_get(source.name, source),
        ) from None


def stamped_digest(path: Path) -> str:
    """The file's BLAKE2b digest, remembered per (path, size, mtime) in ``$BENCH_CACHE/digests.json``."""
    import json

    from bench.hashing import file_digest

    path = Path(path).resolve()
    st = path.stat()
    stamp_file = cache_root() / "digests.json"
    key = str(path)
    try:
        stamps = json.loads(stamp_file.read_text())
    except (OSError, ValueError):
        stamps = {}
    rec = stamps.get(key)
    if rec and rec[0] == st.st_size and rec[1] == st.st_mtime_ns:
        return rec[2]
    d = file_digest(path)
    stamps[key] = [st.st_size, st.st_mtime_ns, d]
    try:
        stamp_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp_file.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(stamps))
        os.replace(tmp, stamp_file)
    except OSError:
        pass
    return d


def iter_json_lines(path: Path):
    """Yield (line number, object) for each non-blank line; a malformed line stops with its number."""
    import json

    from bench.datasets.local import check_unicode

    if Path(path).stat().st_size == 0:
        raise DataError(f"{path} is empty (0 bytes)", hint="the download was interrupted; download the file again")
    try:
        # utf-8-sig: a byte-order mark (as some editors write) is not a JSON error.
        n = 0
        with open(path, encoding="utf-8-sig") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as e:
                    raise DataError(
                        f"{path} line {i}: malformed JSON ({json_error(e)})",
                        hint="the file is truncated or edited; download it again or fix that line",
                    ) from None
                if not isinstance(rec, dict):
                    raise DataError(f"{path} line {i}: expected a JSON object, got {type(rec).__name__}", hint="one JSON object per line; download the file again")
                if "\\ud" in line.lower():  # an escaped surrogate: only a complete pair is text
                    check_unicode(rec, f"{path} line {i}")
                n += 1
                yield i, rec
        if n == 0:
            raise DataError(f"{path} holds no JSON objects (only blank lines)", hint="the download was interrupted; download the file again")
    except UnicodeDecodeError as e:
        raise DataError(f"{path} is not valid UTF-8 ({e.reason} at byte {e.start})", hint="download the file again") from None


def iter_parquet_rows(path: Path, columns: list[str] | None = None):
    """Yield (row number, dict) of a Parquet file, nested values as plain lists/dicts."""
    try:
        import pyarrow.parquet as pq

        pf = pq.ParquetFile(path)
        if pf.metadata.num_rows == 0:
            raise DataError(f"{path} holds no rows", hint="the download was interrupted or the file was overwritten; download it again")
        names = set(pf.schema_arrow.names)
        cols = None if columns is None else [c for c in columns if c in names]
        base = 0
        for batch in pf.iter_batches(batch_size=8192, columns=cols):
            for j, rec in enumerate(batch.to_pylist()):
                yield base + j + 1, rec
            base += batch.num_rows
    except DataError:
        raise
    except Exception as e:
        raise DataError(f"cannot read {path}: {type(e).__name__}: {e}", hint="the file is truncated or not Parquet; download it again") from None

"""The results store: one Parquet file of per-user rows per finished cell.

A *cell* is (dataset, split seed, budgets, method, method version + source hash, params). Its key
is the hash of the canonical cell dict. Files are written under a unique temporary name and
renamed into place, so a reader (or a killed writer) never sees half a cell. Each file carries in
its Parquet metadata the cell dict, provenance, the hash of its rows and the hash of that metadata;
a file whose rows or metadata no longer match is reported, moved to ``quarantine/`` and recomputed
— never aggregated. A write that fails (disk full, read-only directory) raises
:class:`bench.errors.StorageError`, leaves no temporary file and stops the run: finished cells stay.
Failed cells leave ``<key>.failed.json`` (with the traceback) and are retried on the next run.
While a worker computes a cell it holds ``claims/<key>.claim`` (see :mod:`bench.claims`), so that
concurrent runs into one directory compute each cell once.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.errors import IntegrityError, storage_error
from bench.hashing import canonical_json, digest

ENGINE_VERSION = "1"  # bump when the meaning of stored rows changes
# Version of the on-disk layout of a cell file (columns, metadata keys; docs/results.md), written
# into every cell's metadata as "schema"; cells without it are schema 1. Bump on any change a
# reader must know about; bench.results.load refuses files newer than it understands.
STORE_SCHEMA = 1
META_KEY = b"bench"
ELSEWHERE = "choose another results directory with --results DIR"
KEPT = "finished cells are kept: rerun the same command to resume"

ROW_COLUMNS = [
    "cell",
    "dataset",
    "features",
    "split_seed",
    "split_hash",
    "shots",
    "unseen_shots",
    "test_fraction",
    "method",
    "params",
    "user",
    "seen",
    "n_support",
    "n_test",
    "n_correct",
    "accuracy",
]


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")


def atomic_write_bytes(data: bytes, path: Path) -> None:
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def atomic_write_text(text: str, path: Path) -> None:
    atomic_write_bytes(text.encode(), path)


def atomic_write_table(table, path: Path) -> None:
    import pyarrow.parquet as pq

    path = Path(path)
    tmp = _tmp_name(path)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def table_to_frame(table) -> pd.DataFrame:
    """Parquet table → frame with nullable integers, identically on write (for hashing) and read."""
    import pyarrow as pa

    mapping = {pa.int64(): pd.Int64Dtype(), pa.int32(): pd.Int64Dtype()}
    return table.to_pandas(types_mapper=mapping.get)


def rows_digest(rows: pd.DataFrame) -> str:
    """Hash of a row frame's content (column order as given, floats at full precision)."""
    text = rows.to_csv(index=False, float_format="%.17g", lineterminator="\n")
    return digest(text)


# The top-level metadata keys of cells written before metadata carried a hash (accepted without one).
LEGACY_META_KEYS = frozenset(
    {"cell", "provenance", "params_formula", "params_trained", "n_users", "n_invalid_scores", "method_meta", "finished_at",
     "timing", "key", "rows_hash"}
)


def meta_digest(meta: dict[str, Any]) -> str:
    """Hash of a cell's metadata (everything but the hash itself; as JSON reads it back)."""
    return digest(canonical_json({k: v for k, v in meta.items() if k != "meta_hash"}))


def latest_per_split(rows: pd.DataFrame, metas: list[dict[str, Any]]) -> tuple[pd.DataFrame, int]:
    """Rows with one cell per (dataset, features, method, params, split, budgets): the newest.

    A cell's key includes the method's source hash, so after a method's code changes a rerun writes
    a new cell for the same split and the old one stays in the store. Reports and comparisons must
    count each split once; the cell finished last wins. Returns the rows kept and how many cells
    were left out.
    """
    if len(rows) == 0 or "cell" not in rows.columns:
        return rows, 0
    ident = [c for c in ("dataset", "features", "method", "params", "split_seed", "split_hash", "shots",
                         "unseen_shots", "test_fraction") if c in rows.columns]
    finished = {m.get("key"): float(m.get("finished_at") or 0.0) for m in metas}
    # the identity columns are constant within a cell: one row per cell is enough to compare them
    cells = rows.drop_duplicates("cell")[ident + ["cell"]].astype(str)
    cells["finished"] = cells["cell"].map(finished).fillna(0.0)
    keep = cells.sort_values(["finished", "cell"]).drop_duplicates(ident, keep="last")["cell"]
    dropped = cells["cell"].nunique() - keep.nunique()
    if not dropped:
        return rows, 0
    return rows[rows["cell"].astype(str).isin(set(keep))], int(dropped)


@dataclass
class CellStatus:
    key: str
    state: str  # "done", "missing", "failed", "corrupt"
    reason: str = ""


class ResultsStore:
    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.cells_dir = self.root / "cells"

    # ---------------------------------------------------------------- setup
    def ensure_writable(self) -> None:
        """Fail before any work if results (cells, claims) cannot be written here."""
        for d in (self.cells_dir, self.claims_dir):
            try:
                d.mkdir(parents=True, exist_ok=True)
                probe = d / f".probe.{os.getpid()}.{uuid.uuid4().hex[:6]}"
                probe.write_bytes(b"ok")
                probe.unlink()
            except OSError as e:
                raise storage_error(e, self.root, "results", ELSEWHERE) from None

    def cell_path(self, key: str) -> Path:
        return self.cells_dir / f"{key}.parquet"

    @property
    def claims_dir(self) -> Path:
        """Where running workers claim cells (see bench.claims)."""
        return self.root / "claims"

    def remove_stale_temporaries(self, key: str) -> int:
        """Delete temporary files a killed writer left for ``key`` (call only while holding its claim)."""
        n = 0
        for tmp in self.cells_dir.glob(f".{key}.*.tmp"):
            try:
                tmp.unlink()
                n += 1
            except OSError:
                pass
        return n

    def failure_path(self, key: str) -> Path:
        return self.cells_dir / f"{key}.failed.json"

    # ---------------------------------------------------------------- reading
    def read_cell(self, path: Path) -> tuple[pd.DataFrame, dict[str, Any]]:
        """Rows and metadata of one cell file, verified against the recorded rows and metadata hashes."""
        import pyarrow.parquet as pq

        fix = "rerun the same `bench run` command: it moves the file to quarantine/ and recomputes the cell"
        try:
            table = pq.read_table(path)
            raw = (table.schema.metadata or {}).get(META_KEY)
            if raw is None:
                raise ValueError("no bench metadata")
            meta = json.loads(raw)
            rows = table_to_frame(table)
        except Exception as e:  # truncated, not parquet, bad JSON …
            raise IntegrityError(f"result file {path} is unreadable ({type(e).__name__}: {e})", hint=fix) from None
        if not isinstance(meta, dict):
            raise IntegrityError(f"result file {path} has malformed metadata", hint=fix)
        if "meta_hash" in meta:
            if meta_digest(meta) != meta["meta_hash"]:
                raise IntegrityError(f"result file {path}: its metadata does not match its recorded hash", hint=fix)
        elif not set(meta) <= LEGACY_META_KEYS:  # a cell from before metadata hashes — or a damaged "meta_hash" key
            raise IntegrityError(f"result file {path}: its metadata has no valid hash", hint=fix)
        if list(rows.columns[: len(ROW_COLUMNS)]) != ROW_COLUMNS:
            raise IntegrityError(f"result file {path} has unexpected columns", hint=fix)
        h = rows_digest(rows)
        if h != meta.get("rows_hash"):
            raise IntegrityError(f"result file {path}: rows do not match their recorded hash", hint=fix)
        if meta.get("key") != path.stem:
            raise IntegrityError(f"result file {path} holds cell {meta.get('key')}", hint=fix)
        return rows, meta

    def status(self, key: str) -> CellStatus:
        path = self.cell_path(key)
        if path.exists():
            try:
                self.read_cell(path)
            except IntegrityError as e:
                return CellStatus(key, "corrupt", e.message)
            return CellStatus(key, "done")
        if self.failure_path(key).exists():
            return CellStatus(key, "failed")
        return CellStatus(key, "missing")

    def quarantine(self, path: Path, reason: str) -> Path:
        qdir = self.root / "quarantine"
        dest = qdir / f"{path.name}.{time.strftime('%Y%m%dT%H%M%S')}.{uuid.uuid4().hex[:4]}"
        try:
            qdir.mkdir(parents=True, exist_ok=True)
            os.replace(path, dest)
            atomic_write_text(reason + "\n", dest.with_name(dest.name + ".reason.txt"))
        except OSError as e:
            raise storage_error(e, qdir, f"the quarantined copy of {path.name}", f"delete {path} by hand") from None
        return dest

    def load(self, quarantine_bad: bool = False) -> tuple[pd.DataFrame, list[dict[str, Any]], list[str]]:
        """All valid cells' rows, their metadata, and a list of problems (corrupt files)."""
        frames, metas, problems = [], [], []
        if not self.cells_dir.exists():
            return pd.DataFrame(columns=ROW_COLUMNS), [], []
        for path in sorted(self.cells_dir.glob("*.parquet")):
            try:
                rows, meta = self.read_cell(path)
            except IntegrityError as e:
                msg = e.message
                if quarantine_bad:
                    dest = self.quarantine(path, msg)
                    msg += f" (moved to {dest})"
                problems.append(msg)
                continue
            frames.append(rows)
            metas.append(meta)
        if not frames:
            return pd.DataFrame(columns=ROW_COLUMNS), metas, problems
        return pd.concat(frames, ignore_index=True), metas, problems

    def failures(self) -> list[dict[str, Any]]:
        out = []
        for path in sorted(self.cells_dir.glob("*.failed.json")):
            try:
                out.append(json.loads(path.read_text()))
            except (OSError, json.JSONDecodeError):
                out.append({"key": path.name.split(".")[0], "error": "unreadable failure record"})
        return out

    # ---------------------------------------------------------------- writing
    def write_cell(self, key: str, rows: pd.DataFrame, meta: dict[str, Any]) -> Path:
        import pyarrow as pa

        rows = rows[ROW_COLUMNS + [c for c in rows.columns if c not in ROW_COLUMNS]].reset_index(drop=True)
        table = pa.Table.from_pandas(rows, preserve_index=False)
        meta = {**meta, "schema": STORE_SCHEMA, "key": key, "rows_hash": rows_digest(table_to_frame(table))}
        meta = json.loads(canonical_json(meta))  # as it will read back
        meta["meta_hash"] = meta_digest(meta)
        table = table.replace_schema_metadata({META_KEY: canonical_json(meta).encode()})
        path = self.cell_path(key)
        try:
            atomic_write_table(table, path)
            self.failure_path(key).unlink(missing_ok=True)
        except OSError as e:
            raise storage_error(e, self.cells_dir, f"result cell {key}", ELSEWHERE, KEPT) from None
        return path

    def write_failure(self, key: str, cell: dict[str, Any], error: str, traceback_text: str) -> Path:
        record = {"key": key, "cell": cell, "error": error, "traceback": traceback_text, "time": time.time()}
        path = self.failure_path(key)
        try:
            atomic_write_text(json.dumps(record, indent=1, default=str), path)
        except OSError as e:
            raise storage_error(e, self.cells_dir, f"the failure record of cell {key}", ELSEWHERE, KEPT) from None
        return path

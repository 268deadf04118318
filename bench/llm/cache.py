"""An on-disk response cache: SQLite, keyed by (model, messages, sampling parameters).

Only successful completions are stored (a failure is retried on the next run). The key is a
BLAKE2b digest of the canonical JSON of the request, so it does not depend on dict order or on
the process; the request itself is stored beside the answer for inspection. No pickle anywhere.
Several processes may share one file (WAL journal, busy timeout).

Integrity: each row carries ``checksum``, a digest of the key, the request and the answer; a row
read back must match it and its key must be the digest of its request, so a corrupted or edited
answer is never served (an :class:`~bench.errors.IntegrityError` names the file and the fix).
A damaged database file (SQLite's own page checks) is reported the same way, and a cache that
cannot be written (disk full, read-only) raises :class:`~bench.errors.StorageError`.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

from bench.errors import IntegrityError, storage_error
from bench.hashing import canonical_json, digest
from bench.llm.base import ChatRequest, Completion

SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    request TEXT NOT NULL,
    text TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    finish_reason TEXT NOT NULL,
    seconds REAL NOT NULL,
    seed_used INTEGER,
    created REAL NOT NULL,
    checksum TEXT
)
"""
COLUMNS = "key, model, request, text, prompt_tokens, completion_tokens, finish_reason, seconds, seed_used, created, checksum"


def row_checksum(key: str, model: str, request: str, text: str, pt: int, ct: int, finish: str, seed) -> str:
    return digest(canonical_json([key, model, request, text, int(pt), int(ct), finish, seed]), size=16)


def request_json(model_id: str, req: ChatRequest) -> str:
    return canonical_json({"model": model_id, "messages": [list(m) for m in req.messages], "params": req.params.as_dict()})


def cache_key(model_id: str, req: ChatRequest) -> str:
    return digest(request_json(model_id, req).encode("utf-8"), size=20)


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
            try:
                self._conn.execute("PRAGMA journal_mode=WAL")
            except sqlite3.OperationalError:  # pragma: no cover - e.g. a network file system
                pass
            self._conn.execute(SCHEMA)
            self._migrate()
            self._conn.commit()
        except sqlite3.DatabaseError as e:
            raise self._error(e, "open") from None
        except OSError as e:
            raise storage_error(e, self.path.parent, "the LLM response cache", "pass another cache file (or set BENCH_CACHE)") from None

    def _error(self, e: Exception, doing: str):
        text = str(e)
        if any(w in text for w in ("disk is full", "readonly", "read-only", "unable to open", "disk I/O")):
            import errno

            code = errno.ENOSPC if "full" in text else errno.EROFS if "read" in text else errno.EACCES
            return storage_error(OSError(code, text), self.path.parent, f"the LLM response cache {self.path.name}",
                                 "pass another cache file (or set BENCH_CACHE)")
        return IntegrityError(
            f"LLM response cache {self.path} is damaged ({doing}: {text})",
            hint=f"delete {self.path} (its answers are requested again on the next run)",
        )

    def _migrate(self) -> None:
        """Caches made before rows carried a checksum: add the column and checksum their rows."""
        cols = {r[1] for r in self._conn.execute("PRAGMA table_info(responses)")}
        if "checksum" in cols:
            return
        self._conn.execute("ALTER TABLE responses ADD COLUMN checksum TEXT")
        rows = self._conn.execute("SELECT key, model, request, text, prompt_tokens, completion_tokens, finish_reason, seed_used FROM responses").fetchall()
        self._conn.executemany("UPDATE responses SET checksum = ? WHERE key = ?", [(row_checksum(*r), r[0]) for r in rows])

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        q = "SELECT key, model, request, text, prompt_tokens, completion_tokens, finish_reason, seed_used, checksum FROM responses WHERE key IN (%s)"
        with self._lock:
            try:
                for start in range(0, len(keys), 500):
                    chunk = keys[start : start + 500]
                    for k, model, req, text, pt, ct, fr, seed, check in self._conn.execute(q % ",".join("?" * len(chunk)), chunk):
                        if check != row_checksum(k, model, req, text, pt, ct, fr, seed) or digest(req.encode("utf-8"), size=20) != k:
                            raise IntegrityError(
                                f"LLM response cache {self.path}: the stored answer for request {k} does not match its checksum "
                                "(corrupt or edited)",
                                hint=f"delete {self.path} (its answers are requested again), or that row: "
                                f"sqlite3 {self.path} \"DELETE FROM responses WHERE key='{k}'\"",
                            )
                        out[k] = Completion(text, int(pt), int(ct), 0.0, fr, cached=True, attempts=0, seed_used=seed)
            except sqlite3.DatabaseError as e:
                raise self._error(e, "read") from None
        return out

    def put_many(self, items: list[tuple[str, str, str, Completion]]) -> None:
        """Store (key, model_id, request_json, completion) rows; failed completions are skipped."""
        rows = [
            (k, model, req, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.seconds, c.seed_used, time.time(),
             row_checksum(k, model, req, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.seed_used))
            for k, model, req, c in items
            if c.ok
        ]
        if not rows:
            return
        with self._lock:
            try:
                self._conn.executemany(f"INSERT OR REPLACE INTO responses ({COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
                self._conn.commit()
            except sqlite3.DatabaseError as e:
                try:
                    self._conn.rollback()
                except sqlite3.Error:
                    pass
                raise self._error(e, "write") from None

    def __len__(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def requests(self, limit: int = 10) -> list[dict]:
        """The most recent stored requests (for inspection and tests)."""
        with self._lock:
            rows = self._conn.execute("SELECT request, text FROM responses ORDER BY created DESC LIMIT ?", (limit,)).fetchall()
        return [{"request": json.loads(r), "text": t} for r, t in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

"""An on-disk response cache: SQLite, keyed by (model, messages, sampling parameters).

Only successful completions are stored (a failure is retried on the next run). The key is a
BLAKE2b digest of the canonical JSON of the request, so it does not depend on dict order or on
the process; the request itself is stored beside the answer for inspection. No pickle anywhere.
Several processes may share one file (WAL journal, busy timeout).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

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
    created REAL NOT NULL
)
"""


def request_json(model_id: str, req: ChatRequest) -> str:
    return canonical_json({"model": model_id, "messages": [list(m) for m in req.messages], "params": req.params.as_dict()})


def cache_key(model_id: str, req: ChatRequest) -> str:
    return digest(request_json(model_id, req).encode("utf-8"), size=20)


class ResponseCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(str(self.path), timeout=60, check_same_thread=False)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:  # pragma: no cover - e.g. a network file system
            pass
        self._conn.execute(SCHEMA)
        self._conn.commit()

    def get_many(self, keys: list[str]) -> dict[str, Completion]:
        out: dict[str, Completion] = {}
        with self._lock:
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                q = "SELECT key, text, prompt_tokens, completion_tokens, finish_reason, seed_used FROM responses WHERE key IN (%s)"
                for k, text, pt, ct, fr, seed in self._conn.execute(q % ",".join("?" * len(chunk)), chunk):
                    out[k] = Completion(text, int(pt), int(ct), 0.0, fr, cached=True, attempts=0, seed_used=seed)
        return out

    def put_many(self, items: list[tuple[str, str, str, Completion]]) -> None:
        """Store (key, model_id, request_json, completion) rows; failed completions are skipped."""
        rows = [
            (k, model, req, c.text, c.prompt_tokens, c.completion_tokens, c.finish_reason, c.seconds, c.seed_used, time.time())
            for k, model, req, c in items
            if c.ok
        ]
        if not rows:
            return
        with self._lock:
            self._conn.executemany("INSERT OR REPLACE INTO responses VALUES (?,?,?,?,?,?,?,?,?,?)", rows)
            self._conn.commit()

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

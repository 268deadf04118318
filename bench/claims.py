"""Claims: which process is computing which unit of work (a results cell, a feature chunk).

Several runs — local processes, Ray workers on other machines, a second ``bench run`` started by
hand — may write into one results directory. Each unit is computed once: a worker first *claims*
it by creating ``<dir>/<key>.claim`` with ``O_CREAT | O_EXCL`` (atomic on local file systems and
on NFSv3+), writes the cell, and only then removes the claim. Everyone else skips a claimed unit.

A claim records its owner (host, boot id, pid, process start time, a random token). It is
*stale* — its owner is gone — when

* the owner ran on this host (same host name and boot id) and that pid no longer runs, or runs
  another program (its start time differs: the pid was reused); or
* the claim file has not been touched for ``stale_after`` seconds (default 120, env
  ``BENCH_CLAIM_STALE_S``). Owners touch their claims every ``stale_after / 4`` seconds from a
  daemon thread, so this only triggers when the owner's machine died or lost the file system.

A stale claim is broken under a short-lived ``<key>.claim.break`` lock (itself broken after 60 s),
after re-reading it, so two processes recovering the same claim cannot remove a fresh one. Nothing
here depends on the kind of unit: the results store and the feature cache both use it.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from pathlib import Path
from typing import Any

BREAK_LOCK_STALE_S = 60.0


def stale_after_default() -> float:
    try:
        return float(os.environ.get("BENCH_CLAIM_STALE_S", "120"))
    except ValueError:
        return 120.0


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _proc_stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state first), or None (no such
    process, or not Linux)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces: split after its closing parenthesis
    return stat[stat.rfind(")") + 2 :].split()


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), or None when unknown."""
    fields = _proc_stat(pid)
    return fields[19] if fields is not None and len(fields) > 19 else None


def _pid_alive(pid: int) -> bool:
    """Whether ``pid`` runs. A zombie (killed, not yet reaped by its parent) does not: it holds
    nothing any more, and under an init that never reaps it would otherwise look alive forever."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    fields = _proc_stat(pid)  # None without /proc (not Linux): the signal test is all we have
    return not fields or fields[0] not in ("Z", "X", "x")


_HOST = socket.gethostname()
_BOOT = _boot_id()


def owner_record(note: str = "") -> dict[str, Any]:
    pid = os.getpid()
    return {
        "host": _HOST,
        "boot": _BOOT,
        "pid": pid,
        "started": _start_time(pid),
        "token": uuid.uuid4().hex,
        "time": time.time(),
        "note": note,
    }


def owner_alive(rec: dict[str, Any], mtime: float, stale_after: float) -> bool:
    """Whether the owner recorded in a claim may still be working on it."""
    if rec.get("host") == _HOST and rec.get("boot") == _BOOT and isinstance(rec.get("pid"), int):
        pid = rec["pid"]
        if not _pid_alive(pid):
            return False
        started = _start_time(pid)
        if started is not None and rec.get("started") is not None and started != rec["started"]:
            return False  # the pid now belongs to another process
        return True
    return (time.time() - mtime) < stale_after


class _Heartbeat:
    """Touches every claim this process holds, so that other hosts see its claims as live."""

    def __init__(self) -> None:
        self.paths: set[Path] = set()
        self.lock = threading.Lock()
        self.thread: threading.Thread | None = None
        self.pid = -1

    def add(self, path: Path, interval: float) -> None:
        with self.lock:
            self.paths.add(path)
            if self.thread is None or not self.thread.is_alive() or self.pid != os.getpid():
                self.pid = os.getpid()
                self.thread = threading.Thread(target=self._loop, args=(interval,), daemon=True, name="bench-claims")
                self.thread.start()

    def remove(self, path: Path) -> None:
        with self.lock:
            self.paths.discard(path)

    def _loop(self, interval: float) -> None:
        while True:
            time.sleep(max(interval, 0.05))
            with self.lock:
                paths = list(self.paths)
            now = time.time()
            for p in paths:
                try:
                    os.utime(p, (now, now))
                except OSError:
                    pass


_HEARTBEAT = _Heartbeat()


class ClaimDir:
    """Claims on keys in one directory (created on first use)."""

    def __init__(self, directory: str | Path, stale_after: float | None = None):
        self.dir = Path(directory)
        self.stale_after = stale_after_default() if stale_after is None else float(stale_after)
        self.held: dict[str, dict[str, Any]] = {}

    def path(self, key: str) -> Path:
        return self.dir / f"{key}.claim"

    # ------------------------------------------------------------------ reading
    def owner(self, key: str) -> tuple[dict[str, Any], float] | None:
        """(owner record, mtime) of the claim on ``key``, or None when unclaimed."""
        p = self.path(key)
        try:
            st = p.stat()
            text = p.read_text()
        except FileNotFoundError:
            return None
        except OSError:
            return {}, time.time()
        try:
            rec = json.loads(text)
        except ValueError:
            rec = {}  # being written right now (create, then write): treat as live until it ages
        return rec, st.st_mtime

    def is_live(self, key: str) -> bool:
        """Someone (possibly this process) holds a claim on ``key`` that is not stale."""
        got = self.owner(key)
        if got is None:
            return False
        rec, mtime = got
        if not rec:
            return (time.time() - mtime) < self.stale_after
        return owner_alive(rec, mtime, self.stale_after)

    # ------------------------------------------------------------------ claiming
    def try_claim(self, key: str, note: str = "") -> bool:
        """Claim ``key``; False when someone else holds a live claim. Breaks stale claims.

        Raises :class:`bench.errors.StorageError` when the claim directory cannot be written."""
        try:
            return self._try_claim(key, note)
        except OSError as e:
            from bench.errors import storage_error

            raise storage_error(e, self.dir, f"the claim on {key}", "choose another directory (--results DIR, BENCH_CACHE=DIR)") from None

    def _try_claim(self, key: str, note: str) -> bool:
        self.dir.mkdir(parents=True, exist_ok=True)
        for _ in range(3):
            rec = owner_record(note)
            if self._create(key, rec):
                self.held[key] = rec
                _HEARTBEAT.add(self.path(key), self.stale_after / 4)
                return True
            if key in self.held:  # we hold it already
                return True
            if self.is_live(key):
                return False
            self._break(key)
        return False

    def _create(self, key: str, rec: dict[str, Any]) -> bool:
        try:
            fd = os.open(self.path(key), os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        try:
            os.write(fd, json.dumps(rec).encode())
            os.fsync(fd)
        except OSError:
            os.close(fd)
            self.path(key).unlink(missing_ok=True)  # no empty claim left behind (disk full)
            raise
        os.close(fd)
        return True

    def _break(self, key: str) -> None:
        """Remove a stale claim, unless it changed hands while we looked."""
        lock = self.dir / f"{key}.claim.break"
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                if time.time() - lock.stat().st_mtime > BREAK_LOCK_STALE_S:
                    lock.unlink()
            except OSError:
                pass
            return
        os.close(fd)
        try:
            got = self.owner(key)
            if got is None:
                return
            rec, mtime = got
            stale = (time.time() - mtime) >= self.stale_after if not rec else not owner_alive(rec, mtime, self.stale_after)
            if stale:
                try:
                    self.path(key).unlink()
                except FileNotFoundError:
                    pass
        finally:
            try:
                lock.unlink()
            except OSError:
                pass

    def release(self, key: str) -> None:
        """Give up a claim this process holds (after writing the unit, or on failure)."""
        rec = self.held.pop(key, None)
        p = self.path(key)
        _HEARTBEAT.remove(p)
        if rec is None:
            return
        got = self.owner(key)
        if got is not None and got[0].get("token") == rec["token"]:
            try:
                p.unlink()
            except OSError:  # gone, or the directory turned read-only: the claim goes stale with us
                pass

    def sweep(self) -> int:
        """Remove stale claims (and stale break locks) that killed owners left here; returns how many.

        A claim on a unit that was written before its owner died is never claimed again, so
        nothing else would remove it; a run calls this once before it starts."""
        if not self.dir.is_dir():
            return 0
        n = 0
        for p in sorted(self.dir.glob("*.claim")):
            key = p.name[: -len(".claim")]
            if key not in self.held and self.owner(key) is not None and not self.is_live(key):
                self._break(key)
                n += not p.exists()
        for p in self.dir.glob("*.claim.break"):
            try:
                if time.time() - p.stat().st_mtime > BREAK_LOCK_STALE_S:
                    p.unlink()
            except OSError:
                pass
        return n

    def release_all(self) -> None:
        for key in list(self.held):
            self.release(key)

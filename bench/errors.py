"""Errors a user can act on.

Every problem caused by input (an unknown name, a malformed file, an impossible budget) raises a
:class:`BenchError` whose message names the problem and whose ``hint`` names the fix. The CLI
prints both without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable


class BenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __reduce__(self):  # keep the hint across processes (worker → driver, Ray)
        return (self.__class__, (self.message, self.hint))

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class DataError(BenchError):
    """A dataset, feature file or record that fails validation."""


class IntegrityError(BenchError):
    """A stored artifact whose content no longer matches its recorded hash."""


def json_error(e) -> str:
    """``json.JSONDecodeError`` as a phrase: "Expecting ',' delimiter at column 12" (json's own
    messages such as "Unterminated string starting at" already end in "at")."""
    msg = e.msg[: -len(" at")] if e.msg.endswith(" at") else e.msg
    return f"{msg} at column {e.colno}"


def did_you_mean(name: str, valid: Iterable[str], kind: str) -> BenchError:
    """An 'unknown X' error listing the valid names and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    return BenchError(
        f"unknown {kind} '{name}'.{suggestion}",
        hint=f"valid {kind}s: {', '.join(valid)}",
    )


class StorageError(BenchError):
    """A directory bench must write to is full, read-only or not writable (nothing half-written is kept)."""


# errno values that mean "this directory cannot take the write", not a bug
STORAGE_ERRNOS = frozenset(getattr(errno, n) for n in ("ENOSPC", "EDQUOT", "EROFS", "EACCES", "EPERM", "EFBIG") if hasattr(errno, n))


def storage_error(exc: OSError, directory, what: str, elsewhere: str, kept: str = "") -> StorageError:
    """A :class:`StorageError` for an ``OSError`` raised while writing ``what`` under ``directory``.

    ``elsewhere`` says how to write somewhere else (``--results DIR``, ``BENCH_CACHE=DIR``);
    ``kept`` what survives (e.g. "finished cells are kept; rerun the same command to resume").
    """
    code = getattr(exc, "errno", None)
    reason = exc.strerror or str(exc)
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", -1), errno.EFBIG):
        msg = f"no space left to write {what} in {directory} ({reason})"
        fix = f"free space on the file system holding {directory}, or {elsewhere}"
    elif code == errno.EROFS:
        msg = f"{directory} is on a read-only file system: cannot write {what} ({reason})"
        fix = f"remount it read-write, or {elsewhere}"
    elif code in (errno.EACCES, errno.EPERM):
        msg = f"permission denied writing {what} in {directory} ({reason})"
        fix = f"make it writable (chmod -R u+w {directory}), or {elsewhere}"
    else:
        msg = f"cannot write {what} in {directory} ({reason})"
        fix = elsewhere
    if kept:
        fix += f"; {kept}"
    return StorageError(msg, hint=fix)

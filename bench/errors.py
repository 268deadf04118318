"""Errors a user can act on.

Every problem caused by input (an unknown name, a malformed file, an impossible budget) raises a
:class:`BenchError` whose message names the problem and whose ``hint`` names the fix. The CLI
prints both without a traceback; anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class BenchError(Exception):
    """A problem with the user's input or environment, reported without a traceback."""

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        if self.hint:
            return f"{self.message}\n  fix: {self.hint}"
        return self.message


class DataError(BenchError):
    """A dataset, feature file or record that fails validation."""


class IntegrityError(BenchError):
    """A stored artifact whose content no longer matches its recorded hash."""


def did_you_mean(name: str, valid: Iterable[str], kind: str) -> BenchError:
    """An 'unknown X' error listing the valid names and the closest match."""
    valid = sorted(valid)
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.5)
    suggestion = f" Did you mean '{close[0]}'?" if close else ""
    return BenchError(
        f"unknown {kind} '{name}'.{suggestion}",
        hint=f"valid {kind}s: {', '.join(valid)}",
    )

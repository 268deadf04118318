"""Wording helpers for messages: plurals and durations."""

from __future__ import annotations


def plural(n: int, word: str, many: str | None = None) -> str:
    """``1 cell``, ``2 cells`` (``many`` for irregular plurals)."""
    return f"{n:,} {word if n == 1 else (many or word + 's')}"


def fmt_duration(s: float | None) -> str:
    """Seconds as ``H:MM:SS``; ``–`` when unknown."""
    if s is None or s != s or s < 0:
        return "–"
    s = int(round(s))
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    return f"{h}:{m:02d}:{sec:02d}"

"""Budgets: how many of a user's train pairs a method may use (``--shots``, ``--unseen-shots``,
a dataset's ``shots``/``unseen_shots``). A low layer: datasets and the runner both read it."""

from __future__ import annotations

from bench.errors import BenchError

Budget = int | None  # None = all of the user's train pairs


def parse_budget(value: str | int | None, flag: str, allow_zero: bool = False) -> Budget:
    """``all``/None → None; a positive integer (or ≥ 0 with ``allow_zero``) → int; else an error."""
    if value is None:
        return None
    if isinstance(value, str):
        v = value.strip().lower()
        if v in ("all", "none", ""):
            return None
        try:
            num = float(v)
        except ValueError:
            raise BenchError(f"{flag} must be a positive integer or 'all', got '{value}'", hint=f"e.g. {flag} 50, or {flag} all") from None
    else:
        num = float(value)
    if not num.is_integer():
        raise BenchError(f"{flag} must be an integer, got {value}", hint=f"e.g. {flag} 50, or {flag} all")
    n = int(num)
    if n < 0 or (n == 0 and not allow_zero):
        lower = "≥ 0" if allow_zero else "≥ 1"
        raise BenchError(f"{flag} must be {lower} (or 'all'), got {n}", hint=f"e.g. {flag} 50, or {flag} all")
    return n

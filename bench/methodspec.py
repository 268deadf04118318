"""The ``--methods`` value: ``bt,oracle``, ``all``, or ``all,-gpo,-vpl`` (every method but those).

Names match case-insensitively (``BT`` is ``bt``). Every unknown name is reported in one message,
each with its closest registered name.
"""

from __future__ import annotations

import difflib

from bench.errors import BenchError


def _suggest(name: str, names: list[str]) -> str | None:
    lower = {n.lower(): n for n in names}
    close = difflib.get_close_matches(name.lower(), list(lower), n=1, cutoff=0.5)
    return lower[close[0]] if close else None


def expand(spec: str, names: list[str]) -> list[str]:
    lower = {n.lower(): n for n in names}
    parts = [p.strip() for p in str(spec).split(",") if p.strip()]
    if not parts:
        raise BenchError("--methods is empty", hint="e.g. --methods bt,oracle, --methods all or --methods all,-gpo")
    out: list[str] = []
    excluded: list[str] = []
    bad: list[str] = []
    has_all = False
    for part in parts:
        neg = part.startswith("-")
        name = part[1:].strip() if neg else part
        if name.lower() == "all" and not neg:
            has_all = True
            continue
        real = lower.get(name.lower())
        if real is None:
            bad.append(name)
            continue
        if neg:
            excluded.append(real)
        elif real not in out:
            out.append(real)
    if len(bad) == 1:
        s = _suggest(bad[0], names)
        raise BenchError(f"unknown method '{bad[0]}'." + (f" Did you mean '{s}'?" if s else ""),
                         hint=f"valid methods: {', '.join(sorted(names))}")
    if bad:
        msgs = []
        for b in bad:
            s = _suggest(b, names)
            msgs.append(f"'{b}'" + (f" (did you mean '{s}'?)" if s else ""))
        raise BenchError(f"unknown methods {', '.join(msgs)}", hint=f"valid methods: {', '.join(sorted(names))}")
    if excluded and not has_all:
        raise BenchError(f"--methods excludes {', '.join(excluded)} but does not start from all",
                         hint=f"write --methods all,{','.join('-' + e for e in excluded)}")
    if has_all:
        out = [n for n in sorted(names) if n not in excluded] + [n for n in out if n not in names]
        out = list(dict.fromkeys(n for n in out if n not in excluded))
    if not out:
        raise BenchError("--methods leaves no method to run", hint="e.g. --methods bt,oracle or --methods all,-gpo")
    return out


def is_all(spec: str) -> bool:
    """Whether the value starts from ``all`` (then methods a dataset cannot serve are skipped, not errors)."""
    return any(p.strip().lower() == "all" for p in str(spec).split(","))

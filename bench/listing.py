"""``bench list`` on a narrow console (< 120 columns): one head line per plugin and its description
wrapped under it, instead of a table whose description column would be a few words wide."""

from __future__ import annotations

import textwrap

WIDE = 120  # from this width on, bench list prints tables


def _block(head: str, text: str, width: int) -> list[str]:
    lines = [("  " + head)[:width]]
    lines += textwrap.wrap(text, width=max(20, width - 6), initial_indent="      ", subsequent_indent="      ",
                           break_on_hyphens=False) if text else []
    return lines


def narrow_lines(methods: list[dict], datasets: list[dict], width: int) -> list[str]:
    out = ["Methods (name: kind; requires)"]
    for m in methods:
        if "error" in m:
            out += _block(f"{m['name']}: BROKEN", f"{m['error']} ({m['target']})", width)
        else:
            req = ", ".join(m["requires"]) or "nothing"
            out += _block(f"{m['name']}: {m['kind'] or '?'}; requires {req}", m["summary"], width)
    out += ["", "Datasets (name: family, split by; provides; shots seen/unseen)"]
    for d in datasets:
        if "error" in d:
            out += _block(f"{d['name']}: BROKEN", f"{d['error']} ({d['target']})", width)
        else:
            out += _block(f"{d['name']}: {d['family']}, {d['split_by']}; {', '.join(d['provides'])}; "
                          f"{d['shots']}/{d['unseen_shots']}", d["description"], width)
    return out

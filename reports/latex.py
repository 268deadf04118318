"""Small LaTeX helpers shared by the rendered tables: a real minus sign and a width that fits.

* ``minus``: a number's sign printed as a hyphen (``-14.9\\%``) sets a short dash, not a minus;
  every negative number a table prints goes through here and becomes ``$-$14.9\\%``.
* ``fit_width``: wraps a ``tabular`` so it never runs past the text width; a table narrower than
  the line keeps its natural size (it is only ever scaled down, never blown up).
"""

from __future__ import annotations

import re

# a hyphen that stands for a sign: not inside a word or a command, and followed by a digit
_SIGN = re.compile(r"(?<![\w\\$-])-(?=\.?\d)")


def minus(text: str) -> str:
    """``-14.9\\%`` → ``$-$14.9\\%``; hyphens in words (``mrm-no-rpo``) and ranges stay."""
    return _SIGN.sub("$-$", text)


FIT_OPEN = "\\resizebox{\\ifdim\\width>\\linewidth\\linewidth\\else\\width\\fi}{!}{%\n"


def fit_width(latex: str) -> str:
    """Scale the ``tabular`` of ``latex`` down to the line width where it is wider (needs graphicx)."""
    return latex.replace("\\begin{tabular}", FIT_OPEN + "\\begin{tabular}", 1).replace(
        "\\end{tabular}", "\\end{tabular}}", 1)

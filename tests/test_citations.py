"""Docs, cards and messages cite the papers and the project's own files, never the workspace's `shared/`."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# `shared/` as a path into the development workspace (a results path such as /shared/results on a
# cluster's shared disk means something else and is allowed)
WORKSPACE = re.compile(r"(?<![/\w])(\.\./)?shared/(specs|paper)\b")


def test_no_citation_of_the_workspace():
    files = [ROOT / "README.md", ROOT / "CITATION.cff"]
    for folder in ("docs", "methods", "bench", "reports", "configs", "examples"):
        files += [p for p in (ROOT / folder).rglob("*") if p.suffix in (".md", ".py", ".yaml", ".cff", ".toml")]
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in files for i, line in enumerate(p.read_text().splitlines(), 1)
            if WORKSPACE.search(line)]
    assert not hits, hits


def test_the_mrm_card_cites_the_paper(cli):
    code, out, _ = cli("card", "mrm")
    assert code == 0
    assert "One Adapts to Any: Meta Reward Modeling for Personalized" in out
    assert not WORKSPACE.search(out)

"""Data flows one way: a lower layer never imports a higher one (an AST scan of every import,
function-level imports included).

    base → data, method API → feature store → datasets → splits → models/features → methods
         → executors → runner → analysis/reports/testing → CLI

A module belongs to the layer of its longest matching prefix below. ``KNOWN_UPWARD`` lists the
upward imports that remain, each with its reason; the test fails on any other, and on an entry
of that list that no longer exists (so the list only shrinks).
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCES = {"bench": ROOT / "bench", "bench.methods": ROOT / "methods", "bench.reports": ROOT / "reports"}

LAYERS: list[tuple[str, ...]] = [
    ("bench", "bench.errors", "bench.hashing", "bench.progress", "bench.metrics", "bench.stats", "bench.budgets",
     "bench.config", "bench.claims", "bench.store"),
    ("bench.data", "bench.textkeys", "bench.api", "bench.registry", "bench.determinism", "bench.results", "bench.comparison"),
    ("bench.features.cache",),  # the feature store: read by dataset loaders, written by bench embed
    ("bench.datasets",),
    ("bench.splits",),
    ("bench.features", "bench.llm"),  # feature extraction, LLM engines
    ("bench.methods",),
    ("bench.executors",),
    # tuning runs candidate fits through the runner's cell code, and the runner expands METHOD@tuned
    ("bench.runner", "bench.features.parallel", "bench.tuning"),
    ("bench.plan", "bench.analysis", "bench.experiments", "bench.reports", "bench.testing"),
    ("bench.cli", "bench.commands", "bench.__main__"),
]

KNOWN_UPWARD = {
    # a worker computes its cells with the runner's cell code, and the runner dispatches units to
    # executors: breaking it means moving run_many out of bench/runner.py (left for a later change,
    # to keep parallel branches mergeable)
    ("bench.executors", "bench.runner"),
    # the Ray pool of LLM engine replicas reuses the executors' Ray helpers (require_ray, worker env)
    ("bench.llm.pool", "bench.executors"),
}


def modules() -> dict[str, Path]:
    out = {}
    for pkg, base in SOURCES.items():
        for p in base.rglob("*.py"):
            parts = [x for x in p.relative_to(base).with_suffix("").parts if x != "__init__"]
            out[".".join([pkg, *parts])] = p
    return out


def imports(mods: dict[str, Path]) -> set[tuple[str, str]]:
    edges = set()
    for m, p in mods.items():
        for node in ast.walk(ast.parse(p.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for name in names:
                while name and name not in mods:
                    name = name.rpartition(".")[0]
                if name and name != m:
                    edges.add((m, name))
    return edges


def layer(module: str) -> int:
    best, found = -1, None
    for i, prefixes in enumerate(LAYERS):
        for pre in prefixes:
            if (module == pre or module.startswith(pre + ".")) and len(pre) > best:
                best, found = len(pre), i
    assert found is not None, f"{module} has no layer: add it to LAYERS in {__file__}"
    return found


def test_every_module_has_a_layer():
    for m in modules():
        layer(m)


def test_no_lower_layer_imports_a_higher_one():
    edges = imports(modules())
    upward = {(a, b) for a, b in edges if layer(b) > layer(a)}
    assert upward - KNOWN_UPWARD == set(), sorted(upward - KNOWN_UPWARD)
    assert KNOWN_UPWARD <= upward, f"no longer upward, remove from KNOWN_UPWARD: {sorted(KNOWN_UPWARD - upward)}"


def test_the_import_circles_of_issue_16_are_gone():
    edges = imports(modules())
    for a, b in [
        ("bench.datasets.local", "bench.runner"),  # parse_budget now lives in bench.budgets
        ("bench.features.cache", "bench.datasets.textdata"),  # text keys now live in bench.textkeys
        ("bench.features.parallel", "bench.commands.embed"),  # load_text_dataset now in bench.datasets
    ]:
        assert (a, b) not in edges, f"{a} imports {b}"


def test_the_scan_sees_function_level_imports(tmp_path):
    """The scan can fail: a lazy upward import inside a function is an edge."""
    mods = {"bench.store": tmp_path / "store.py", "bench.runner": tmp_path / "runner.py"}
    mods["bench.store"].write_text("def f():\n    from bench.runner import run\n")
    mods["bench.runner"].write_text("")
    assert ("bench.store", "bench.runner") in imports(mods)
    assert layer("bench.store") < layer("bench.runner")

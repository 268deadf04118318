"""Plugin discovery through Python entry points.

Methods register in the group ``bench.methods`` and datasets in ``bench.datasets`` — the in-tree
ones exactly like third-party ones (see ``pyproject.toml``). Listing never imports torch: method
modules import heavy libraries inside the functions that need them. A plugin that fails to import
breaks only itself and is reported by ``bench list``.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from bench.errors import BenchError, did_you_mean

METHOD_GROUP = "bench.methods"
DATASET_GROUP = "bench.datasets"


@lru_cache(maxsize=None)
def _group(group: str) -> dict[str, EntryPoint]:
    eps = {}
    for ep in entry_points(group=group):
        eps.setdefault(ep.name, ep)
    return eps


def method_names() -> list[str]:
    names = sorted(_group(METHOD_GROUP))
    if not names:
        raise BenchError(
            "no methods are registered",
            hint="install the package (pip install -e .) so that its entry points exist",
        )
    return names


@dataclass
class PluginInfo:
    name: str
    target: str
    obj: object | None
    error: str | None


def _load(group: str, name: str):
    eps = _group(group)
    if name not in eps:
        kind = "method" if group == METHOD_GROUP else "dataset"
        raise did_you_mean(name, eps, kind)
    ep = eps[name]
    try:
        return ep.load()
    except (Exception, SystemExit) as e:  # a broken plugin must not take the harness down (not even by exiting)
        kind = "methods" if group == METHOD_GROUP else "datasets"
        raise BenchError(
            f"plugin '{name}' ({ep.value}) failed to import: {_one_line(e)}",
            hint=f"fix or uninstall that plugin (`bench list` shows what is broken); other {kind} are unaffected",
        ) from None


def _one_line(e: BaseException) -> str:
    return traceback.format_exception_only(type(e), e)[-1].strip()


def method_problem(name: str, obj: object) -> str | None:
    """Why a loaded ``bench.methods`` entry point is not a usable method, or None."""
    from bench.api import Method

    if not (isinstance(obj, type) and issubclass(obj, Method)):
        return f"entry point '{name}' does not name a bench.api.Method subclass"
    if obj.name != name:
        return f"method class {obj.__name__} declares name '{obj.name}' but is registered as '{name}'"
    return None


def load_method(name: str):
    cls = _load(METHOD_GROUP, name)
    problem = method_problem(name, cls)
    if problem:
        raise BenchError(problem, hint="fix the plugin's entry point (pyproject.toml [project.entry-points.\"bench.methods\"])")
    return cls


def describe(group: str) -> list[PluginInfo]:
    """Every plugin of ``group``, loaded; one that fails to import (or is not a method) carries its error."""
    out = []
    for name, ep in sorted(_group(group).items()):
        try:
            obj = ep.load()
        except (Exception, SystemExit) as e:
            out.append(PluginInfo(name, ep.value, None, _one_line(e)))
            continue
        problem = method_problem(name, obj) if group == METHOD_GROUP else (None if callable(obj) else "not a loader function")
        out.append(PluginInfo(name, ep.value, None if problem else obj, problem))
    return out


def dataset_plugins() -> dict[str, EntryPoint]:
    return dict(_group(DATASET_GROUP))


def load_dataset_loader(name: str):
    return _load(DATASET_GROUP, name)


def expand_methods(spec: str) -> list[str]:
    """``all`` or a comma-separated list, validated against the registry (keeps order, dedups)."""
    names = method_names()
    if spec.strip() == "all":
        return names
    out = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        base = part[: -len("@tuned")] if part.endswith("@tuned") else part  # bench/tuning.py
        if base not in names:
            raise did_you_mean(base, names, "method")
        if part not in out:
            out.append(part)
    if not out:
        raise BenchError("--methods is empty", hint="e.g. --methods bt,oracle or --methods all")
    return out

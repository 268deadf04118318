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
    except Exception as e:  # a broken plugin must not take the harness down
        raise BenchError(
            f"plugin '{name}' ({ep.value}) failed to import: {type(e).__name__}: {e}",
            hint="fix or uninstall that plugin; other methods are unaffected",
        ) from None


def load_method(name: str):
    from bench.api import Method

    cls = _load(METHOD_GROUP, name)
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise BenchError(f"entry point '{name}' does not name a bench.api.Method subclass")
    if cls.name != name:
        raise BenchError(f"method class {cls.__name__} declares name '{cls.name}' but is registered as '{name}'")
    return cls


def describe(group: str) -> list[PluginInfo]:
    out = []
    for name, ep in sorted(_group(group).items()):
        try:
            obj = ep.load()
            out.append(PluginInfo(name, ep.value, obj, None))
        except Exception as e:
            tb = traceback.format_exception_only(type(e), e)[-1].strip()
            out.append(PluginInfo(name, ep.value, None, tb))
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
        if part not in names:
            raise did_you_mean(part, names, "method")
        if part not in out:
            out.append(part)
    if not out:
        raise BenchError("--methods is empty", hint="e.g. --methods bt,oracle or --methods all")
    return out

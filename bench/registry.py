"""Plugin discovery through Python entry points.

Methods register in the group ``bench.methods`` and datasets in ``bench.datasets`` — the in-tree
ones exactly like third-party ones (see ``pyproject.toml``). Listing never imports torch: method
modules import heavy libraries inside the functions that need them. A plugin that fails to import
breaks only itself and is reported by ``bench list``.

A method can also come from a local file without packaging: ``--methods ./my_method.py:MyMethod``
(or ``./my_method.py`` when the file defines exactly one ``Method`` subclass). The file is imported
once per process under a private module name; the class's ``name`` is the name its rows carry, and
worker processes (``--jobs``, Ray) import the same file by its absolute path.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sys
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


# ---------------------------------------------------------------------------- local files

LOCAL_MODULE_PREFIX = "bench_local_plugin_"
_LOCAL: dict[str, type] = {}  # method name → class loaded from a local file (this process)


def _split_local(spec: str) -> tuple[str, str]:
    if spec.endswith(".py") or ":" not in spec:
        return spec, ""
    path, _, cls_name = spec.rpartition(":")
    return path, cls_name


def is_local_spec(spec: str) -> bool:
    """``path.py`` or ``path.py:ClassName``: a method in a local file, not a registered name."""
    return _split_local(spec)[0].endswith(".py")


def load_local_method(spec: str) -> type:
    """Import the method class of ``path.py[:ClassName]`` and remember it under its ``name``."""
    from pathlib import Path

    from bench.api import Method

    path_text, cls_name = _split_local(spec)
    path = Path(path_text).expanduser()
    fix_form = "e.g. --methods ./my_method.py:MyMethod"
    if not path.is_file():
        raise BenchError(f"method file {path_text} does not exist", hint=f"give the path of a .py file that defines a bench.api.Method subclass, {fix_form}")
    path = path.resolve()
    module_name = LOCAL_MODULE_PREFIX + hashlib.sha1(str(path).encode()).hexdigest()[:12]
    module = sys.modules.get(module_name)
    if module is None:
        loader_spec = importlib.util.spec_from_file_location(module_name, path)
        if loader_spec is None or loader_spec.loader is None:
            raise BenchError(f"method file {path} cannot be imported", hint="give a Python source file ending in .py")
        module = importlib.util.module_from_spec(loader_spec)
        sys.modules[module_name] = module
        try:
            loader_spec.loader.exec_module(module)
        except (Exception, SystemExit) as e:
            del sys.modules[module_name]
            raise BenchError(f"method file {path} failed to import: {_one_line(e)}", hint="fix the error in that file") from None
    candidates = {
        k: v for k, v in vars(module).items()
        if isinstance(v, type) and issubclass(v, Method) and v is not Method and v.__module__ == module_name
    }
    if cls_name:
        if cls_name not in vars(module):
            found = ", ".join(sorted(candidates)) or "none"
            raise BenchError(f"{path.name} has no class {cls_name}", hint=f"its bench.api.Method subclasses: {found}")
        cls = vars(module)[cls_name]
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise BenchError(f"{path.name}:{cls_name} is not a bench.api.Method subclass", hint="subclass bench.api.Method (see the README, \"Adding a method\")")
    elif len(candidates) == 1:
        cls = next(iter(candidates.values()))
    else:
        found = ", ".join(sorted(candidates)) or "none"
        raise BenchError(
            f"{path.name} defines {len(candidates)} Method subclasses ({found}); say which one",
            hint=f"name the class after a colon: --methods {path_text}:ClassName",
        )
    if not cls.name:
        raise BenchError(f"{path.name}:{cls.__name__} has no name", hint="set the class attribute name = \"my-method\" (the name its rows carry)")
    if cls.name in _group(METHOD_GROUP):
        raise BenchError(
            f"{path.name}:{cls.__name__} is named '{cls.name}', like an installed method",
            hint="give the local method another name (class attribute name = ...)",
        )
    other = _LOCAL.get(cls.name)
    if other is not None and other is not cls:
        raise BenchError(f"two local method classes are named '{cls.name}'", hint="give each a different class attribute name")
    _LOCAL[cls.name] = cls
    return cls


def local_target(cls: type) -> str | None:
    """``file:/abs/path.py:Class`` for a class loaded by :func:`load_local_method`, else None."""
    if not cls.__module__.startswith(LOCAL_MODULE_PREFIX):
        return None
    return f"file:{sys.modules[cls.__module__].__file__}:{cls.__qualname__}"


def load_method(name: str):
    if name in _LOCAL:
        return _LOCAL[name]
    if is_local_spec(name):
        return load_local_method(name)
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
    """``all``, a comma-separated list, or ``all,-name,…`` (all but those), validated against the
    registry (keeps order, dedups). Names match case-insensitively; every unknown name is reported
    at once, each with its closest match. A local file ``./my_method.py:MyMethod`` is loaded and
    stands for its method's name."""
    from bench.methodspec import expand

    names = method_names()
    parts = []
    for part in str(spec).split(","):
        part = part.strip()
        if part and is_local_spec(part):
            part = load_local_method(part).name
            if part not in names:
                names = names + [part]
        parts.append(part)
    # METHOD@tuned (bench/tuning.py): the base name is validated like any other, the suffix kept
    tuned = [p for p in parts if p.endswith("@tuned")]
    plain = [p for p in parts if p and not p.endswith("@tuned")]
    out = expand(",".join(plain), names) if plain else []
    for p in tuned:
        (base,) = expand(p[: -len("@tuned")], names)
        if f"{base}@tuned" not in out:
            out.append(f"{base}@tuned")
    if not out:
        raise BenchError("--methods is empty", hint="e.g. --methods bt,oracle or --methods all")
    return out

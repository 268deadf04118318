"""YAML configuration shipped in ``configs/`` (installed as ``bench.configs``).

* ``configs/datasets/<name>.yaml`` — source, family, split style, the paper's budgets, and the
  generator or loader options of a dataset;
* ``configs/methods/<name>.yaml`` — a method's official settings: ``default`` plus overrides per
  dataset ``family`` (e.g. MRM's learning rates differ between PRISM and Reddit);
* ``configs/experiments/*.yaml`` — what each paper table or figure needs.

Always read with ``yaml.safe_load``.
"""

from __future__ import annotations

import math
import re
from importlib import resources
from typing import Any

import yaml

from bench.errors import BenchError


def _read(rel: str) -> dict[str, Any] | None:
    node = resources.files("bench.configs")
    for part in rel.split("/"):
        node = node / part
    if not node.is_file():
        return None
    try:
        data = yaml.safe_load(node.read_text())
    except yaml.YAMLError as e:
        raise BenchError(f"config {rel} is not valid YAML: {e}") from None
    return data or {}


def dataset_config(name: str) -> dict[str, Any]:
    return _read(f"datasets/{name}.yaml") or {}


def method_config(name: str) -> dict[str, Any]:
    return _read(f"methods/{name}.yaml") or {}


def experiment_config(name: str) -> dict[str, Any] | None:
    return _read(f"experiments/{name}.yaml")


_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_value(text: str) -> Any:
    """A YAML scalar; plus numbers YAML 1.1 leaves as text, such as ``1e-3`` (no dot)."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str) and _NUMBER.fullmatch(value.strip()):
        return float(value)
    return value


def _override_value(method: str, key: str, value: Any, default: Any) -> Any:
    """``--param`` values must have the type of the parameter's default (ints may be written
    ``3.0``); NaN/Inf are refused everywhere. A mismatch would otherwise fail deep inside the
    method, or worse (``iterations=true`` is the integer 1), run with a value nobody meant."""

    def bad(expected: str) -> BenchError:
        return BenchError(
            f"--param {method}.{key}={value!r}: expected {expected}, got {type(value).__name__}",
            hint=f"its default is {default!r}; e.g. --param {method}.{key}={default}",
        )

    def finite(v: Any) -> None:
        if isinstance(v, float) and not math.isfinite(v):
            raise BenchError(f"--param {method}.{key}={v}: NaN and Inf are not parameter values", hint=f"its default is {default!r}")
        if isinstance(v, (list, tuple)):
            for x in v:
                finite(x)
        if isinstance(v, dict):
            for x in v.values():
                finite(x)

    finite(value)
    if default is None:
        return value
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if isinstance(default, int):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (isinstance(value, float) and not value.is_integer()):
            raise bad("an integer")
        return int(value)
    if isinstance(default, float):
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad("a number")
        return value
    if isinstance(default, str):
        if not isinstance(value, str):
            raise bad("text (quote it if it looks like a number or yes/no)")
        return value
    if isinstance(default, (list, tuple)) and not isinstance(value, (list, tuple)):
        raise bad("a list, e.g. [1, 2]")
    if isinstance(default, dict) and not isinstance(value, dict):
        raise bad("a mapping, e.g. {a: 1}")
    return value


def parse_overrides(items: list[str] | None, methods: list[str]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    """``--param method.key=value`` (one method) or ``--param key=value`` (every selected method
    that has ``key``). Returns (per-method overrides, global overrides)."""
    per_method: dict[str, dict[str, Any]] = {m: {} for m in methods}
    global_: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise BenchError(f"--param '{item}' is not KEY=VALUE", hint="e.g. --param mrm.epochs=50")
        lhs, value = item.split("=", 1)
        value = parse_value(value)
        if "." in lhs:
            m, key = lhs.split(".", 1)
            if m not in per_method:
                raise BenchError(f"--param {item}: method '{m}' is not among --methods {','.join(methods)}", hint=f"add {m} to --methods, or write --param KEY=VALUE for every selected method")
            per_method[m][key] = value
        else:
            global_[lhs] = value
    return per_method, global_


def plugin_config_path(cls):
    """Where a method outside bench keeps its settings: a YAML file beside its module, same stem
    (``mypkg/mymethod.py`` → ``mypkg/mymethod.yaml``; a package: ``card.md`` → ``config.yaml``)."""
    card = cls.card_path()
    return card.with_name("config.yaml") if card.name == "card.md" else card.with_suffix(".yaml")


def _method_settings(cls) -> tuple[dict[str, Any], str]:
    """(settings, where they came from): bench's own configs/methods/<name>.yaml, else the plugin's file."""
    cfg = _read(f"methods/{cls.name}.yaml")
    if cfg is not None:
        return cfg, f"configs/methods/{cls.name}.yaml"
    try:
        path = plugin_config_path(cls)
    except (TypeError, OSError):  # a class without a source file
        return {}, ""
    if not path.is_file():
        return {}, ""
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise BenchError(f"config {path} is not valid YAML: {e}", hint="fix the file (keys: default, families, datasets)") from None
    if data is not None and not isinstance(data, dict):
        raise BenchError(f"config {path} is not a mapping", hint="write `default: {param: value}` and optional `families:`/`datasets:` blocks")
    return data or {}, str(path)


def resolve_params(cls, family: str, overrides: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """Class defaults < settings default < family block < dataset block < overrides.

    The settings are ``configs/methods/<name>.yaml`` for bench's own methods and, for a plugin,
    the YAML file beside its module (:func:`plugin_config_path`). A ``datasets: {<name>: …}``
    block sets what one dataset needs beyond its family (e.g. a small CPU model on the offline
    text benchmark).
    """
    params = dict(cls.default_params())
    cfg, where = _method_settings(cls)
    params.update(cfg.get("default", {}) or {})
    params.update((cfg.get("families", {}) or {}).get(family, {}) or {})
    if dataset is not None:
        params.update((cfg.get("datasets", {}) or {}).get(dataset, {}) or {})
    valid = set(cls.param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise BenchError(f"{where} sets unknown parameters {unknown}", hint=f"parameters of {cls.name}: {', '.join(sorted(valid)) or '(none)'}")
    for key, value in overrides.items():
        if key not in valid:
            raise BenchError(
                f"method '{cls.name}' has no parameter '{key}'",
                hint=f"its parameters: {', '.join(sorted(valid)) or '(none)'}",
            )
        params[key] = _override_value(cls.name, key, value, params.get(key))
    return params

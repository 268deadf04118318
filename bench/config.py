"""YAML configuration shipped in ``configs/`` (installed as ``bench.configs``).

* ``configs/datasets/<name>.yaml`` — source, family, split style, the paper's budgets, and the
  generator or loader options of a dataset;
* ``configs/methods/<name>.yaml`` — a method's official settings: ``default`` plus overrides per
  dataset ``family`` (e.g. MRM's learning rates differ between PRISM and Reddit);
* ``configs/experiments/*.yaml`` — what each paper table or figure needs.

Always read with ``yaml.safe_load``.
"""

from __future__ import annotations

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


def parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


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
                raise BenchError(f"--param {item}: method '{m}' is not among --methods {','.join(methods)}")
            per_method[m][key] = value
        else:
            global_[lhs] = value
    return per_method, global_


def resolve_params(cls, family: str, overrides: dict[str, Any], dataset: str | None = None) -> dict[str, Any]:
    """Class defaults < configs/methods/<name>.yaml default < family block < dataset block < overrides.

    A ``datasets: {<name>: …}`` block sets what one dataset needs beyond its family (e.g. a small
    CPU model on the offline text benchmark).
    """
    params = dict(cls.default_params())
    cfg = method_config(cls.name)
    params.update(cfg.get("default", {}) or {})
    params.update((cfg.get("families", {}) or {}).get(family, {}) or {})
    if dataset is not None:
        params.update((cfg.get("datasets", {}) or {}).get(dataset, {}) or {})
    valid = set(cls.param_names())
    unknown = sorted(set(params) - valid)
    if unknown:
        raise BenchError(f"configs/methods/{cls.name}.yaml sets unknown parameters {unknown}")
    for key, value in overrides.items():
        if key not in valid:
            raise BenchError(
                f"method '{cls.name}' has no parameter '{key}'",
                hint=f"its parameters: {', '.join(sorted(valid)) or '(none)'}",
            )
        params[key] = value
    return params

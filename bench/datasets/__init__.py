"""Dataset registry and the ``--dataset`` spec.

A spec is a registered name (``synthetic-prism``), a name with options
(``synthetic-prism:dim=256,users=200``) or a path to a bring-your-own-data directory
(``./my-data``; see ``bench/datasets/local.py``). Loaders register in the entry-point group
``bench.datasets`` as ``load(name, options, config) -> Dataset``; ``configs/datasets/<name>.yaml``
supplies their defaults (family, split style, the paper's budgets, generator options).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.config import dataset_config, parse_value
from bench.data import Dataset
from bench.errors import BenchError, did_you_mean
from bench.registry import dataset_plugins, load_dataset_loader

_CACHE: dict[str, Dataset] = {}


def dataset_names() -> list[str]:
    return sorted(dataset_plugins())


def parse_spec(spec: str) -> tuple[str, dict[str, Any]]:
    name, _, opts = spec.partition(":")
    options: dict[str, Any] = {}
    if opts:
        for part in opts.split(","):
            if not part.strip():
                continue
            if "=" not in part:
                raise BenchError(f"dataset option '{part}' is not KEY=VALUE", hint="e.g. synthetic-prism:dim=256,users=200")
            k, v = part.split("=", 1)
            options[k.strip()] = parse_value(v.strip())
    return name.strip(), options


def is_path_spec(spec: str) -> bool:
    return spec.startswith((".", "/", "~")) or Path(spec).expanduser().is_dir()


def load_dataset(spec: str) -> Dataset:
    """Load a dataset by spec (memoised per process)."""
    if spec in _CACHE:
        return _CACHE[spec]
    if is_path_spec(spec):
        from bench.datasets.local import load_directory

        ds = load_directory(Path(spec).expanduser())
    else:
        name, options = parse_spec(spec)
        names = dataset_names()
        if name not in names:
            raise did_you_mean(name, names, "dataset")
        loader = load_dataset_loader(name)
        ds = loader(name, options, dataset_config(name))
        if options:
            ds.name = name  # options are part of the fingerprint, not the display name
    _CACHE[spec] = ds
    return ds


def describe_datasets() -> list[dict[str, Any]]:
    """Every registered dataset with its config; a loader plugin that fails to import has ``error``."""
    from bench.registry import DATASET_GROUP, describe

    out: list[dict[str, Any]] = []
    for info in describe(DATASET_GROUP):
        name = info.name
        if info.error:
            out.append({"name": name, "target": info.target, "error": info.error})
            continue
        cfg = dataset_config(name)
        out.append(
            {
                "name": name,
                "description": cfg.get("description", ""),
                "family": cfg.get("family", ""),
                "split_by": cfg.get("split_by", ""),
                "provides": cfg.get("provides", []),
                "shots": cfg.get("shots", "all"),
                "unseen_shots": cfg.get("unseen_shots", "all"),
            }
        )
    return out


def load_text_dataset(spec: str):
    """Load a registered text dataset without features (``features=none``)."""
    if is_path_spec(spec):
        raise BenchError("bench embed works on registered text datasets (reddit, prism)", hint="--dataset reddit:data_dir=DIR")
    name, options = parse_spec(spec)
    if name not in dataset_names():
        raise did_you_mean(name, dataset_names(), "dataset")
    options = {k: v for k, v in options.items() if k not in ("features", "feature_key")}
    ds = load_dataset_loader(name)(name, dict(options, features="none"), dataset_config(name))
    if not ds.has_text:
        raise BenchError(f"dataset {name} has no text to embed", hint="its features come with the dataset")
    return ds

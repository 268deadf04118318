"""YAML configuration (installed as ``bench.configs``): datasets, methods, experiments."""

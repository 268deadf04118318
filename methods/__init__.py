"""Method plugins: one module per method, each with its card (``<module>.md``) beside it.

Installed as ``bench.methods``; every method is registered through the ``bench.methods``
entry-point group in ``pyproject.toml``, exactly as a third-party plugin would be.
"""

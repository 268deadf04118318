"""Small pieces of the command line kept out of :mod:`bench.cli`: SIGTERM handling and leaving no
empty results directory behind a run that stopped on bad input."""

from __future__ import annotations

import contextlib
import os
import signal
from collections.abc import Iterator
from pathlib import Path

_terminated = False


class Terminated(KeyboardInterrupt):
    """SIGTERM, delivered as an interrupt so that every path that keeps work on Ctrl-C keeps it here."""


def _on_sigterm(signum, frame) -> None:
    global _terminated
    _terminated = True
    raise Terminated()


def handle_sigterm():
    """Treat SIGTERM (``kill PID``, a batch scheduler's time limit) like Ctrl-C (main thread only);
    returns the previous handler for :func:`restore_sigterm`."""
    global _terminated
    _terminated = False
    try:
        return signal.signal(signal.SIGTERM, _on_sigterm)
    except (ValueError, OSError):  # not the main thread
        return None


def restore_sigterm(old) -> None:
    if old is not None:
        with contextlib.suppress(ValueError, OSError, TypeError):
            signal.signal(signal.SIGTERM, old)


def was_terminated() -> bool:
    return _terminated


def interrupted_code() -> tuple[int, str]:
    """Exit status and word for an interrupted command: 143 'terminated' after SIGTERM, else 130."""
    return (143, "terminated (SIGTERM)") if _terminated else (130, "interrupted")


@contextlib.contextmanager
def keep_results_clean(results: Path) -> Iterator[None]:
    """If the block fails, remove the results folders it created and left empty (a run that stops on
    bad input leaves no ``results/{cells,claims}`` behind)."""
    root = Path(results)
    before = {p for p in (root, root / "cells", root / "claims", root / "splits") if p.exists()}
    try:
        yield
    except BaseException:
        for d in (root / "claims", root / "cells", root / "splits", root):
            if d in before or not d.is_dir():
                continue
            try:
                next(os.scandir(d))
            except StopIteration:
                with contextlib.suppress(OSError):
                    d.rmdir()
            except OSError:
                pass
        raise


def stored_names(store) -> str:
    """A hint listing the datasets and methods a results directory holds (from cell metadata only)."""
    import json

    import pyarrow.parquet as pq

    from bench.store import META_KEY

    datasets, methods = set(), set()
    for path in sorted(store.cells_dir.glob("*.parquet")):
        try:
            cell = json.loads((pq.read_schema(path).metadata or {})[META_KEY])["cell"]
        except Exception:  # noqa: BLE001
            continue
        datasets.add(str(cell.get("dataset")))
        methods.add(str(cell.get("method")))
    if not datasets:
        return "no readable cells are stored there; run `bench run` first"
    return f"stored there: datasets {', '.join(sorted(datasets))}; methods {', '.join(sorted(methods))}"

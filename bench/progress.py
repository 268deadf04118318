"""Progress display for long loops: a rich bar on a terminal, silence otherwise (logs, CI)."""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def track(iterable: Iterable[T], total: int, description: str) -> Iterator[T]:
    if not sys.stderr.isatty():
        yield from iterable
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as prog:
        task = prog.add_task(description, total=total)
        for item in iterable:
            yield item
            prog.advance(task)


def note(message: str) -> None:
    print(message, file=sys.stderr, flush=True)

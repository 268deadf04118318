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


# ---------------------------------------------------------------------------- progress inside a cell
#
# A method reports how far its own loop is with one call per epoch (or per chunk of steps):
#
#     from bench.progress import step
#     for epoch in range(self.epochs):
#         ...
#         step(epoch + 1, self.epochs, "epoch")
#
# The call only reads a clock and, at most a few times a second, hands an event to whoever
# listens: the ``bench run`` display in this process, or (in a ``--jobs N`` worker process) a
# sender that forwards the event to the driver over the worker's pipe. Nothing listens in tests
# and notebooks, and then ``step`` returns at once. It never touches a random state, so it cannot
# change results.

import time as _time  # noqa: E402
from collections.abc import Callable  # noqa: E402
from contextlib import contextmanager  # noqa: E402

Event = dict  # {"label": unit label or None, "what": "epoch", "done": int, "total": int, "time": unix seconds}

_sink: Callable[[Event], None] | None = None
_label: str | None = None
_last = 0.0
MIN_INTERVAL_S = 0.25  # events closer together than this are dropped (the last one of a loop never is)


def step(done: int, total: int, what: str = "step") -> None:
    """Report that ``done`` of ``total`` iterations (epochs, steps, …) of the current fit are done."""
    global _last
    sink = _sink
    if sink is None:
        return
    now = _time.monotonic()
    if done < total and now - _last < MIN_INTERVAL_S:
        return
    _last = now
    try:
        sink({"label": _label, "what": str(what), "done": int(done), "total": int(total), "time": _time.time()})
    except Exception:  # noqa: BLE001 - a display problem must never fail a method
        pass


def set_sink(sink: Callable[[Event], None] | None) -> Callable[[Event], None] | None:
    """Install the listener of :func:`step` events (None: nobody); returns the previous one."""
    global _sink
    old, _sink = _sink, sink
    return old


@contextmanager
def listening(sink: Callable[[Event], None] | None):
    """Deliver :func:`step` events to ``sink`` inside the block."""
    old = set_sink(sink)
    try:
        yield
    finally:
        set_sink(old)


@contextmanager
def unit(label: str):
    """Tag the events of the block with the label of the unit (fit group) being computed."""
    global _label, _last
    old, _label, _last = _label, label, 0.0
    try:
        yield
    finally:
        _label = old


def forward(event: Event) -> None:
    """Deliver an event that came from elsewhere (a worker process) to this process's listener."""
    sink = _sink
    if sink is not None:
        try:
            sink(event)
        except Exception:  # noqa: BLE001
            pass

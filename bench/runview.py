"""What ``bench run`` shows while it runs: cells done, progress inside the running cells, ETAs by time.

On a terminal a live display (rich) shows one bar for the cells and one per running fit group
with the method's own epochs or steps (reported through :func:`bench.progress.step`), each with an
ETA computed from elapsed time. Without a terminal (nohup, a batch scheduler, ``| tee``) it prints
plain lines instead: one when a fit group finishes, and every ``every_s`` seconds (default 30,
``BENCH_PROGRESS_EVERY``) one per running fit group and one for the whole run.

The overall ETA uses the plan's per-fit-group estimates (:mod:`bench.plan`), rescaled by how
long the finished groups actually took against their estimates; without estimates it uses the
mean time of the finished groups.
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field
from typing import Any


from bench.text import fmt_duration, plural  # noqa: F401 - re-exported


@dataclass
class _Running:
    label: str
    started: float
    what: str = ""
    done: int = 0
    total: int = 0
    first: tuple[float, int] | None = None  # (time, done) of the first inner event
    last_t: float = 0.0
    task: Any = None

    def eta(self, now: float) -> float | None:
        """Seconds left in this group's loop, from the pace of its own epochs/steps."""
        if self.first is None or self.total <= 0:
            return None
        t0, d0 = self.first
        if self.done <= d0:
            return None
        rate = (self.last_t - t0) / (self.done - d0)
        return max(0.0, rate * (self.total - self.done) - (now - self.last_t))


@dataclass
class RunView:
    console: Any
    tty: bool
    every_s: float = 30.0
    estimates: dict[str, float] = field(default_factory=dict)  # unit label → estimated seconds
    jobs: int = 1
    preparing: str = "preparing"

    def __post_init__(self):
        self._lock = threading.RLock()
        self._running: dict[str, _Running] = {}
        self._finished: dict[str, float] = {}  # label → seconds it took
        self._done = 0
        self._total = 0
        self._t0 = time.monotonic()
        self._desc = self.preparing
        self._prog = None
        self._task = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_print = time.monotonic()

    # ------------------------------------------------------------------ lifecycle
    def __enter__(self) -> "RunView":
        from bench import progress

        if self.tty:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._prog = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(bar_width=20),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[eta]}"),
                console=self.console,
                transient=True,
            )
            self._prog.__enter__()
            self._task = self._prog.add_task(self.preparing, total=None, eta="")
        else:
            self._say(f"{self.preparing} …")
        self._old_sink = progress.set_sink(self.inner)
        self._thread = threading.Thread(target=self._tick_loop, name="bench-runview", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        from bench import progress

        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        progress.set_sink(self._old_sink)
        if self._prog is not None:
            self._prog.__exit__(*exc)

    # ------------------------------------------------------------------ callbacks
    def log(self, message: str) -> None:
        with self._lock:
            (self._prog.console if self._prog is not None else self.console).print(message, markup=False, highlight=False)

    def cells(self, desc: str, done: int, total: int) -> None:
        """The runner's progress callback: ``desc`` is '<label>', '<label> (+N running)',
        '<label> finished', 'waiting for …' or 'done'."""
        now = time.monotonic()
        with self._lock:
            self._done, self._total = done, total
            if desc.endswith(" finished"):
                label = desc[: -len(" finished")]
                r = self._running.pop(label, None)
                if r is not None:
                    took = now - r.started
                    self._finished[label] = took
                    if r.task is not None and self._prog is not None:
                        self._prog.remove_task(r.task)
                    if not self.tty:
                        self._say(f"{label} finished in {fmt_duration(took)} ({done} of {plural(total, 'cell')} done)")
                desc = ", ".join(self._running) or desc
            elif desc != "done" and not desc.startswith("waiting"):
                label = desc.split(" (+", 1)[0]
                if label not in self._running:
                    self._running[label] = _Running(label, now)
            self._desc = desc
            self._refresh(now)

    def inner(self, ev: dict) -> None:
        """A :func:`bench.progress.step` event (from this process or forwarded from a worker)."""
        now = time.monotonic()
        with self._lock:
            label = ev.get("label") or next(iter(self._running), "cell")
            r = self._running.get(label)
            if r is None:
                r = self._running[label] = _Running(label, now)
            if r.what != ev.get("what") or ev.get("done", 0) < r.done:
                r.first = None  # a new loop (e.g. adapt epochs after fit epochs)
            r.what, r.done, r.total, r.last_t = str(ev.get("what", "step")), int(ev.get("done", 0)), int(ev.get("total", 0)), now
            if r.first is None:
                r.first = (now, r.done)
            if self._prog is not None:
                if r.task is None:
                    r.task = self._prog.add_task("", total=max(r.total, 1), eta="")
                self._prog.update(r.task, description=f"  {label}: {r.what}", completed=r.done, total=max(r.total, 1),
                                  eta=self._eta_text(r.eta(now), "cell"))

    # ------------------------------------------------------------------ ETAs
    def total_eta(self, now: float | None = None) -> float | None:
        now = time.monotonic() if now is None else now
        with self._lock:
            remaining = [lb for lb in self.estimates if lb not in self._finished]
            if self.estimates and remaining:
                ratios = [t / self.estimates[lb] for lb, t in self._finished.items() if self.estimates.get(lb)]
                scale = min(5.0, max(0.2, sum(ratios) / len(ratios))) if ratios else 1.0
                left = 0.0
                for lb in remaining:
                    est = self.estimates[lb] * scale
                    r = self._running.get(lb)
                    if r is not None:
                        inner = r.eta(now)
                        est = inner if inner is not None else max(0.0, est - (now - r.started))
                    left += est
                return left / max(1, min(self.jobs, len(remaining)))
            if self._finished and self._total:
                per_cell = (now - self._t0) / max(self._done, 1)
                return per_cell * (self._total - self._done) / max(1, self.jobs)
            return None

    @staticmethod
    def _eta_text(eta: float | None, what: str) -> str:
        return f"{what} ETA {fmt_duration(eta)}" if eta is not None else f"{what} ETA –"

    def _refresh(self, now: float) -> None:
        if self._prog is not None and self._task is not None:
            self._prog.update(self._task, description=self._desc, completed=self._done,
                              total=max(self._total, 1) if self._total else None, eta=self._eta_text(self.total_eta(now), "run"))
            for r in self._running.values():
                if r.task is not None:
                    self._prog.update(r.task, eta=self._eta_text(r.eta(now), "cell"))

    # ------------------------------------------------------------------ plain lines
    def _say(self, text: str) -> None:
        stamp = fmt_duration(time.monotonic() - self._t0)
        self.console.print(f"[{stamp}] {text}", markup=False, highlight=False)

    def status_lines(self, now: float | None = None) -> list[str]:
        now = time.monotonic() if now is None else now
        with self._lock:
            if not self._total and not self._running:
                return [f"{self.preparing} …"]
            out = []
            for r in self._running.values():
                if r.total:
                    eta = r.eta(now)
                    left = f", {fmt_duration(eta)} left in it" if eta is not None else ""
                    out.append(f"{r.label}: {r.what} {r.done} of {r.total}{left}")
                else:
                    out.append(f"{r.label}: running for {fmt_duration(now - r.started)}")
            eta = self.total_eta(now)
            out.append(f"{self._done} of {plural(self._total, 'cell')} done"
                       + (f", about {fmt_duration(eta)} left" if eta is not None else ""))
            return out

    def _tick_loop(self) -> None:
        period = 1.0 if self.tty else min(1.0, self.every_s)
        while not self._stop.wait(period):
            now = time.monotonic()
            with self._lock:
                if self.tty:
                    self._refresh(now)
                elif now - self._last_print >= self.every_s:
                    self._last_print = now
                    for line in self.status_lines(now):
                        self._say(line)


def progress_every() -> float:
    try:
        return max(0.1, float(os.environ.get("BENCH_PROGRESS_EVERY", "30")))
    except ValueError:
        return 30.0

"""Progress of a sweep on stderr, with an ETA: a rich bar on a terminal, otherwise a line every few seconds.

The ETA weighs each system by its estimated states (sweep_size.done_sets: systems run largest first, so
a count of systems would promise too early an end) and divides what is left by the rate measured so far.
"""
from __future__ import annotations

import time

from ..sweep_size import duration

LINE_SECONDS = 5.0


class SweepProgress:
    def __init__(self, console, weights: dict[str, float], *, quiet: bool = False, interval: float = LINE_SECONDS):
        self.console, self.weights, self.quiet, self.interval = console, weights, quiet, interval
        self.total_weight = sum(weights.values()) or 1.0
        self.preset: set[str] = set()
        self.done_weight = self.preset_weight = 0.0
        self.done = 0
        self.t0 = self.last_line = time.monotonic()
        self.bar = None

    def skip(self, labels) -> None:
        """Systems explored before the sweep started (the calibration): done, but not part of the rate."""
        self.preset |= set(labels)
        self.preset_weight = sum(self.weights.get(x, 0.0) for x in self.preset)

    def __enter__(self):
        self.t0 = self.last_line = time.monotonic()
        if not self.quiet and self.console.is_terminal:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
            self.bar = Progress(TextColumn("sweep"), BarColumn(), MofNCompleteColumn(), TextColumn("systems"),
                                TimeElapsedColumn(), TextColumn("{task.fields[eta]}"), console=self.console,
                                transient=True)
            self.bar.start()
            self.task = self.bar.add_task("sweep", total=len(self.weights), eta="")
        return self

    def __exit__(self, *exc):
        if self.bar is not None:
            self.bar.stop()
            self.bar = None
        return False

    def eta(self) -> float | None:
        """Seconds left at the rate measured since the start; None before anything was measured."""
        ran = self.done_weight - self.preset_weight
        elapsed = time.monotonic() - self.t0
        if ran <= 0 or elapsed <= 0:
            return None
        return (self.total_weight - self.done_weight) * elapsed / ran

    def __call__(self, done: int, total: int, label: str) -> None:
        self.done = done
        self.done_weight += self.weights.get(label, 0.0)
        if self.quiet:
            return
        eta = self.eta()
        left = f"ETA {duration(eta)}" if eta is not None and done < total else ""
        if self.bar is not None:
            self.bar.update(self.task, completed=done, eta=left)
            return
        now = time.monotonic()
        if done < total and now - self.last_line >= self.interval:
            self.last_line = now
            share = 100 * self.done_weight / self.total_weight
            self.console.print(f"sweep: {done}/{total} systems explored (~{share:.0f}% of the work), "
                               f"{duration(now - self.t0)} elapsed, {left} (last: {label})", markup=False,
                               soft_wrap=True)
        elif done == total:
            self.console.print(f"sweep: {done}/{total} systems explored in {duration(now - self.t0)}", markup=False,
                               soft_wrap=True)

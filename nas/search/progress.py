"""The progress bar within a trial's epochs, for a worker that runs one trial at a time on a terminal.

A CPU epoch of the default search takes 10-100 s: without a bar a person cannot tell a slow epoch
from a stuck one. Rich is imported only when a bar is first drawn.
"""

from __future__ import annotations

import time
from typing import Any


class EpochBar:
    """A progress bar within epochs that take long (a CPU epoch of the default search takes
    10-100 s), drawn only on a terminal; log lines keep printing above it."""

    AFTER = 3.0  # seconds into an epoch before a bar is worth drawing

    def __init__(self) -> None:
        self.bar: Any = None
        self.began: float | None = None

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.bar is None:
            self.began = self.began or now
            if now - self.began < self.AFTER or done >= total:
                if done >= total:
                    self.began = None
                return
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

            self.bar = Progress(
                TextColumn("epoch"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("images"),
                TimeRemainingColumn(),
                transient=True,
            )
            self.task = self.bar.add_task("", total=total)
            self.bar.start()
        self.bar.update(self.task, completed=done, total=total)
        if done >= total:
            self.close()

    def close(self) -> None:
        """Take the bar off the terminal (at an epoch's end, or when training stops midway)."""
        if self.bar is not None:
            self.bar.stop()
        self.bar, self.began = None, None

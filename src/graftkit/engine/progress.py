"""Progress output: a rich bar with ETA on a terminal, one plain line per epoch in logs."""
from __future__ import annotations

import sys
from typing import Any


def resolve_progress(mode: str) -> str:
    if mode == "auto":
        return "bar" if sys.stdout.isatty() else "plain"
    return mode


class ProgressReporter:
    """Read-only observer of training: it prints, it never changes training."""

    def __init__(self, mode: str = "auto") -> None:
        self.mode = resolve_progress(mode)
        self._progress: Any = None
        self._task: Any = None
        if self.mode == "bar":
            from rich.console import Console
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeElapsedColumn, TimeRemainingColumn)

            self._progress = Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                                      TextColumn("loss {task.fields[loss]}"), TimeElapsedColumn(),
                                      TextColumn("ETA"), TimeRemainingColumn(),
                                      console=Console(), transient=True)
            self._progress.start()

    def message(self, text: str) -> None:
        if self.mode == "none":
            return
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            print(text, flush=True)

    def start_epoch(self, description: str, num_batches: int) -> None:
        if self._progress is not None:
            self._task = self._progress.add_task(description, total=num_batches, loss="-")

    def step(self, loss: float) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=f"{loss:.3f}")

    def advance(self, count: int) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=count)

    def end_epoch(self, line: str) -> None:
        if self._progress is not None and self._task is not None:
            self._progress.remove_task(self._task)
            self._task = None
        self.message(line)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

"""What a person watching the trainer sees: a live rich progress bar with throughput on a terminal, a
line every `every_seconds` in a log file or a pipe (user-data logs, CI)."""

from __future__ import annotations

import logging
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

log = logging.getLogger("trainer")


def format_metrics(values: dict) -> str:
    parts = []
    for key, value in values.items():
        if value is None:
            continue
        if key.endswith(("acc1", "acc5")):
            parts.append(f"{key} {value:.1%}")
        elif key == "lr":
            parts.append(f"lr {value:.2e}")
        elif key == "images_per_sec":
            parts.append(f"{value:,.0f} img/s")
        elif isinstance(value, float):
            parts.append(f"{key} {value:.4f}")
        else:
            parts.append(f"{key} {value}")
    return "  ".join(parts)


class ConsoleProgress:
    def __init__(self, console: Console, live: bool, every_seconds: float = 30.0):
        self.console, self.live, self.every_seconds = console, live, every_seconds
        self._progress: Progress | None = None
        self._task = None
        self._last_line = 0.0

    def downloading(self, done: int, total: int) -> None:
        if done == total or time.monotonic() - self._last_line >= self.every_seconds:
            self._last_line = time.monotonic()
            log.info("data: downloaded %d/%d files", done, total)

    def start(self, total_steps: int, done_steps: int) -> None:
        if not self.live:
            return
        self._progress = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[metrics]}"),
            console=self.console,
            transient=False,
        )
        self._task = self._progress.add_task("training", total=total_steps, completed=done_steps, metrics="")
        self._progress.start()

    def update(self, step: int, epoch: int, epochs: int, values: dict) -> None:
        text = format_metrics(values)
        if self._progress is not None:
            self._progress.update(self._task, completed=step, description=f"epoch {epoch + 1}/{epochs}", metrics=text)
        elif time.monotonic() - self._last_line >= self.every_seconds:
            self._last_line = time.monotonic()
            log.info("epoch %d/%d step %d  %s", epoch + 1, epochs, step, text)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

"""Progress of long work: done/total, rate, time left.

On a terminal, a live bar (rich). Elsewhere — a SLURM log, a pipe, a file — a bar only draws once at
the end, so a plain line is printed instead every `interval_s` seconds (and when the work ends):
someone tailing a job's log sees it move, and a stalled job is told apart from a slow one.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TextIO

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text

#: Seconds between progress lines when output is not a terminal.
LINE_INTERVAL_S = 30.0


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "objects", *, stream: TextIO | None = None,
                 interval_s: float = LINE_INTERVAL_S) -> Iterator[Callable[[int], None]]:
    """Yield `advance(k, note="")`: a bar on a terminal, else a `ProgressLines` line every `interval_s`
    seconds; `note` (e.g. the share of time spent waiting for data) is shown after the rate."""
    stream = stream or sys.stdout
    if stream.isatty():
        columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
                   TimeRemainingColumn(), TextColumn("{task.fields[note]}")]
        with Progress(*columns) as progress:
            task = progress.add_task(description, total=total, note="")
            yield lambda k=1, note="": progress.update(task, advance=k, note=note)
        return
    lines = ProgressLines(description, total, unit, stream, interval_s)
    yield lines.advance
    lines.finish()


class ProgressLines:
    """Plain progress lines: `description: done/total unit (percent), rate, ETA`."""

    def __init__(self, description: str, total: int | None, unit: str, stream: TextIO, interval_s: float,
                 clock: Callable[[], float] = time.monotonic):
        self.description, self.total, self.unit, self.stream = description, total, unit, stream
        self.interval_s, self.clock = interval_s, clock
        self.done, self.note = 0, ""
        self.started = self.last_line = clock()

    def advance(self, k: int = 1, note: str = "") -> None:
        self.done, self.note = self.done + k, note
        if self.clock() - self.last_line >= self.interval_s:
            self._line()

    def finish(self) -> None:
        self._line(final=True)

    def _line(self, final: bool = False) -> None:
        now = self.clock()
        self.last_line = now
        elapsed = max(now - self.started, 1e-9)
        rate = self.done / elapsed
        of = f"/{self.total:,}" if self.total else ""
        share = f" ({self.done / self.total:.0%})" if self.total else ""
        if final:
            tail = f"done in {_duration(elapsed)}"
        elif self.total and rate > 0:
            tail = f"ETA {_duration((self.total - self.done) / rate)}"
        else:
            tail = "ETA unknown"
        note = f", {self.note}" if self.note else ""
        self.stream.write(f"{self.description}: {self.done:,}{of} {self.unit}{share}, {rate:,.1f} {self.unit}/s{note}, {tail}\n")
        self.stream.flush()


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, seconds = divmod(rest, 60)
    return f"{hours}h{minutes:02d}m" if hours else f"{minutes}m{seconds:02d}s" if minutes else f"{seconds}s"

"""Progress bars for long work (rich): done/total, objects per second, time left."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.progress import BarColumn, MofNCompleteColumn, Progress, ProgressColumn, TextColumn, TimeRemainingColumn
from rich.text import Text


class _RateColumn(ProgressColumn):
    def __init__(self, unit: str):
        super().__init__()
        self.unit = unit

    def render(self, task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(f"{speed:,.1f} {self.unit}/s" if speed else f"- {self.unit}/s", style="cyan")


@contextmanager
def progress_bar(description: str, total: int | None, unit: str = "objects") -> Iterator[Callable[[int], None]]:
    """Yield `advance(k)` for a bar showing done/total, rate and time left."""
    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), _RateColumn(unit),
               TimeRemainingColumn()]
    with Progress(*columns) as progress:
        task = progress.add_task(description, total=total)
        yield lambda k=1: progress.advance(task, k)

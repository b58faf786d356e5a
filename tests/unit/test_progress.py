"""Progress where output is not a terminal (a SLURM log, a pipe): a line every interval, not one bar
drawn at the end."""

import io

from fmb.progress import ProgressLines, progress_bar


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_a_line_every_interval_with_rate_and_eta():
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines("embedding aion", 1000, "objects", out, interval_s=30, clock=clock)
    for _ in range(10):  # 10 objects per 5 s for 50 s: one line at 30 s, then the closing one
        clock.now += 5
        lines.advance(10)
    lines.finish()
    printed = out.getvalue().splitlines()
    assert printed == ["embedding aion: 60/1,000 objects (6%), 2.0 objects/s, ETA 7m50s",
                       "embedding aion: 100/1,000 objects (10%), 2.0 objects/s, done in 50s"]


def test_unknown_total_says_so():
    clock, out = Clock(), io.StringIO()
    lines = ProgressLines("scanning", None, "rows", out, interval_s=1, clock=clock)
    clock.now = 2
    lines.advance(5)
    assert out.getvalue() == "scanning: 5 rows, 2.5 rows/s, ETA unknown\n"


def test_progress_bar_writes_lines_when_not_a_terminal():
    out = io.StringIO()  # not a tty
    with progress_bar("indexing", 3, unit="shards", stream=out, interval_s=0) as advance:
        for _ in range(3):
            advance(1)
    printed = out.getvalue().splitlines()
    assert len(printed) == 4 and printed[-1].startswith("indexing: 3/3 shards (100%)") and "done in" in printed[-1]

"""The app's draw-ahead thread stops cleanly: at interpreter exit it finishes the drawing under way
and drops the rest, where a daemon thread killed inside matplotlib's FreeType code aborted the process
(status 134, "terminate called without an active exception")."""

import subprocess
import sys
import threading
import time

from fmb.app.render import DrawAhead

SCRIPT = """
import time
from pathlib import Path
from fmb.app.render import DrawAhead

log = Path({log!r})

def draw(object_id):
    with log.open("a") as out:
        out.write(f"start {{object_id}}\\n")
    time.sleep(0.5)
    with log.open("a") as out:
        out.write(f"end {{object_id}}\\n")

DrawAhead(draw).schedule([1, 2, 3])
while not log.exists():
    time.sleep(0.01)
"""  # the interpreter exits while object 1 is being drawn


def test_exit_waits_for_the_drawing_under_way_and_drops_the_rest(tmp_path):
    log = tmp_path / "log"
    result = subprocess.run([sys.executable, "-c", SCRIPT.format(log=str(log))], capture_output=True, text=True,
                            timeout=60)
    assert result.returncode == 0, result.stderr
    assert log.read_text().splitlines() == ["start 1", "end 1"]


def test_close_stops_the_thread_and_later_schedules_draw_nothing():
    drawn, started = [], threading.Event()

    def draw(object_id):
        started.set()
        drawn.append(object_id)

    ahead = DrawAhead(draw)
    ahead.schedule([7])
    assert started.wait(10)
    ahead.close()
    assert not ahead._thread.is_alive()
    ahead.schedule([8, 9])
    time.sleep(0.1)
    assert drawn == [7]

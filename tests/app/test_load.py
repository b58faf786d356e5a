"""Labels through the real server (uvicorn in its own process on 127.0.0.1): concurrent writers lose
none, and a server killed with SIGKILL mid-write keeps every label it acknowledged."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import run_config

from fmb.app.labels import LabelStore
from tests.app.live import LiveServer, post_json, private_copy

WRITERS, LABELS_EACH = 8, 250


@pytest.fixture
def project(scored_run: Path, tmp_path: Path) -> Path:
    return private_copy(scored_run, tmp_path / "project", run_config(scored_run).layout.app.dir)


def object_ids(project: Path) -> list[int]:
    import pandas as pd

    return pd.read_parquet(run_config(project).layout.scores.table("pixels"), columns=["object_id"]).object_id.tolist()


def label(server: LiveServer, object_id: int, writer: int, number: int) -> tuple[int, dict]:
    """One label whose note names it: `writer-number`."""
    return post_json(server.port, "/api/labels", {"object_id": str(object_id), "interest": number % 6,
                                                  "note": f"{writer}-{number}", "user": f"writer{writer}"})


def stored_notes(project: Path) -> set[str]:
    return set(LabelStore(run_config(project).layout.app.labels_db).events().note)


def test_concurrent_writers_lose_no_label(project: Path):
    ids = object_ids(project)

    def write(writer: int) -> list[int]:
        return [label(server, ids[(writer * LABELS_EACH + number) % len(ids)], writer, number)[0]
                for number in range(LABELS_EACH)]

    with LiveServer(project) as server, ThreadPoolExecutor(WRITERS) as pool:
        statuses = [status for answers in pool.map(write, range(WRITERS)) for status in answers]
    assert statuses == [201] * WRITERS * LABELS_EACH
    expected = {f"{writer}-{number}" for writer in range(WRITERS) for number in range(LABELS_EACH)}
    assert stored_notes(project) == expected


def test_every_acknowledged_label_survives_sigkill(project: Path):
    ids = object_ids(project)
    acknowledged: list[str] = []
    stop = threading.Event()

    def write(writer: int) -> None:
        for number in range(10**6):
            if stop.is_set():
                return
            try:
                status, answer = label(server, ids[number % len(ids)], writer, number)
            except OSError:  # the server is gone: this label was never acknowledged
                return
            if status == 201:
                acknowledged.append(f"{writer}-{number}")

    server = LiveServer(project).start()
    writers = [threading.Thread(target=write, args=(writer,)) for writer in range(4)]
    for thread in writers:
        thread.start()
    while len(acknowledged) < 200:
        time.sleep(0.01)
    server.kill()  # with four writers in flight
    stop.set()
    for thread in writers:
        thread.join(timeout=60)
    assert stored_notes(project) >= set(acknowledged)
    with LiveServer(project) as restarted:  # the log opens again after the crash and takes new labels
        assert label(restarted, ids[0], 99, 0)[0] == 201
    assert {"99-0", *acknowledged} <= stored_notes(project)

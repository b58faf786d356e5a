"""The label log: WAL and durable, safe under concurrent writers, append-only, replayable, undoable,
exported and imported without loss, and bad input refused with one line naming the field."""

import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from fmb.app import labels as labels_module
from fmb.app.labels import LabelStore
from fmb.errors import FmbError


@pytest.fixture
def store(tmp_path: Path) -> LabelStore:
    labels = LabelStore(tmp_path / "labels.sqlite")
    yield labels
    labels.close()


def test_the_log_is_in_wal_mode_and_append_only(store: LabelStore):
    store.add(1, 3, user="ann")
    with sqlite3.connect(store.path) as other:
        assert other.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        for statement in ("UPDATE events SET interest = 0", "DELETE FROM events"):
            with pytest.raises(sqlite3.IntegrityError, match="append-only"):
                other.execute(statement)
    assert store.current().interest.tolist() == [3]


def test_eight_concurrent_writers_lose_nothing(store: LabelStore):
    ids, errors = [], []

    def label(writer: int) -> None:
        try:
            for i in range(40):
                ids.append(store.add(writer * 1000 + i, i % 6, ["t"], user=f"user{writer}"))
        except Exception as error:  # reported below: an exception in a thread would otherwise vanish
            errors.append(error)

    threads = [threading.Thread(target=label, args=(writer,)) for writer in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    events = store.events()
    assert len(ids) == len(set(ids)) == len(events) == 320
    assert set(events.object_id) == {w * 1000 + i for w in range(8) for i in range(40)}
    assert (events.groupby("user").size() == 40).all()


CRASHING_WRITER = """
import os, signal, sys
from fmb.app import labels as labels_module
from fmb.app.labels import LabelStore
store = LabelStore(sys.argv[1])
for object_id in range(25):
    print(store.add(object_id, object_id % 6, user="crash"), flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_killed_writer_loses_nothing_it_acknowledged(tmp_path: Path):
    path = tmp_path / "labels.sqlite"
    run = subprocess.run([sys.executable, "-c", CRASHING_WRITER, str(path)], capture_output=True, text=True)
    assert run.returncode == -9, run.stderr
    acknowledged = [int(line) for line in run.stdout.split()]
    assert len(acknowledged) == 25
    events = LabelStore(path).events()
    assert events.id.tolist() == acknowledged and events.object_id.tolist() == list(range(25))


def test_replay_gives_the_labels_as_they_stood(store: LabelStore):
    store.add(1, 1, ["lens"], user="ann", ranking="fused_cauchy", rank=1)
    store.add(2, 0, user="bob")
    first = _tick()
    store.add(1, 4, ["lens", "merger"], user="ann", ranking="astronomaly", rank=3)
    second = _tick()
    store.undo("ann")
    then = store.current(first)
    assert then.object_id.tolist() == [1, 2] and then.interest.tolist() == [1, 0] and then.tags[0] == ["lens"]
    later = store.current(second)
    assert later.set_index("object_id").loc[1, ["interest", "ranking", "rank"]].tolist() == [4, "astronomaly", 3]
    assert store.current().interest.tolist() == [1, 0]  # the relabel undone: the first label is back
    assert store.current(first - 60).empty


def test_a_snapshot_names_its_last_event_and_one_objects_label_is_a_lookup(store: LabelStore):
    assert store.snapshot()[1] == 0 and store.label(1) is None
    first = store.add(1, 2, ["lens"], note="arc", user="ann")
    between = _tick()
    second = store.add(1, 5, user="bob")
    store.add(2, 0, user="bob")
    labels, event = store.snapshot()
    assert event == second + 1 and labels.interest.tolist() == [5, 0]
    then, event_then = store.snapshot(between)
    assert event_then == first and then.interest.tolist() == [2] and then.tags[0] == ["lens"]
    state = store.label(1)
    assert state == {"event": second, "interest": 5, "tags": [], "note": "", "user": "bob", "time": state["time"]}
    undo = store.undo("bob")  # bob's latest: object 2
    assert store.object_of(undo) == 2 and store.label(2) is None
    assert store.object_of(store.undo("bob")) == 1 and store.label(1)["event"] == first  # ann's label is back
    assert store.object_of(10**6) is None
    with sqlite3.connect(store.path) as other:  # found through the index, not by reading the log
        plan = " ".join(row[-1] for row in other.execute("EXPLAIN QUERY PLAN " + labels_module._LABEL_OF, (1,)))
    assert "USING COVERING INDEX events_object" in plan or "USING INDEX events_object" in plan


def test_undo_cancels_the_users_own_latest_labels_only(store: LabelStore, tmp_path: Path):
    assert store.undo("ann") is None
    store.add(1, 5, user="ann")
    store.add(2, 3, user="ann")
    store.add(3, 2, user="bob")
    imported = tmp_path / "in.csv"
    pd.DataFrame({"object_id": [4], "interest": [1]}).to_csv(imported, index=False)
    store.import_labels(imported, user="ann")
    first, second = store.undo("ann"), store.undo("ann")
    assert first is not None and second is not None and store.undo("ann") is None
    assert store.current().object_id.tolist() == [3, 4]  # bob's label and the import remain
    undos = store.events().query("kind == 'undo'")
    assert undos.object_id.tolist() == [2, 1] and len(store.events()) == 6


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_export_then_import_round_trips(store: LabelStore, tmp_path: Path, suffix: str):
    store.add(10, 5, ["lens", "AGN"], note='a "lensed" arc, faint\nsecond line', user="ann")
    store.add(-3, 0, ["artefact"], user="bob")
    store.add(2**62, None, ["merger"], note="tags only", user="bob")
    store.add(7, 2, user="ann")
    path = tmp_path / f"labels{suffix}"
    assert store.export(path) == 4
    other = LabelStore(tmp_path / "other.sqlite")
    assert other.import_labels(path, user="carl") == 4
    fields = ["object_id", "interest", "tags", "note"]
    pd.testing.assert_frame_equal(other.current()[fields], store.current()[fields])
    assert set(other.events().kind) == {"import"} and set(other.current().user) == {"carl"}


@pytest.mark.parametrize(("arguments", "field"), [
    ({"object_id": 1.5, "interest": 1}, "field object_id"),
    ({"object_id": "7", "interest": 1}, "field object_id"),
    ({"object_id": 2**63, "interest": 1}, "field object_id"),
    ({"object_id": 1, "interest": 6}, "object 1, field interest"),
    ({"object_id": 1, "interest": True}, "object 1, field interest"),
    ({"object_id": 1}, "object 1, field interest"),
    ({"object_id": 1, "interest": 2, "tags": ["not a tag"]}, "object 1, field tags"),
    ({"object_id": 1, "interest": 2, "tags": "x" * 41}, "object 1, field tags"),
    ({"object_id": 1, "interest": 2, "user": "ann smith"}, "object 1, field user"),
    ({"object_id": 1, "interest": 2, "rank": 0}, "object 1, field rank"),
])
def test_bad_labels_are_refused_naming_the_field(store: LabelStore, arguments: dict, field: str):
    with pytest.raises(FmbError, match=f"^{field}: "):
        store.add(**arguments)
    assert store.events().empty


def test_a_bad_row_refuses_the_whole_import(store: LabelStore, tmp_path: Path):
    path = tmp_path / "labels.csv"
    pd.DataFrame({"object_id": [1, 2, 3], "interest": [4, 2, 9], "tags": ["lens", "", "x"]}).to_csv(path, index=False)
    with pytest.raises(FmbError, match=r"labels.csv: row 3: object 3, field interest: must be an integer from 0 to 5"):
        store.import_labels(path, user="ann")
    assert store.events().empty
    pd.DataFrame({"object_id": [1], "score": [4]}).to_csv(path, index=False)
    with pytest.raises(FmbError, match="no interest column"):
        store.import_labels(path, user="ann")
    with pytest.raises(FmbError, match=r"\.csv or \.parquet"):
        store.export(tmp_path / "labels.json")


def test_a_file_that_is_not_a_label_log_is_one_line(tmp_path: Path):
    path = tmp_path / "labels.sqlite"
    path.write_bytes(b"this is not a database" * 100)
    with pytest.raises(FmbError, match=f"label log {path}: file is not a database"):
        LabelStore(path)


def _tick() -> float:
    """A time strictly between the events before and after it."""
    time.sleep(0.01)
    now = time.time()
    time.sleep(0.01)
    return now

"""The discovery app's labels: one append-only log of events in SQLite.

Every action is a new row, never an update: a label (an interest 0-5, free tags and a note, with the
ranking and rank at which the object was shown), an undo (which cancels that user's latest label not
undone yet) or an imported label. A label is the object's whole state: the latest one not undone is
what the object carries. So several people can label one run, nothing is ever lost, and the labels as
they stood at any past time are a replay of the rows up to it (`LabelStore.current(at)`).

The journal is WAL with ``synchronous=FULL``: an id that `add` returned is on disk before the caller
hears of it, and readers never wait for a writer. Each thread has its own connection (the server
answers requests on threads) and every write is one committed transaction; the triggers refuse any
UPDATE or DELETE, so the log stays append-only whoever opens the file.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fmb.errors import DataError, FmbError
from fmb.io import write_csv, write_table

MAX_INTEREST = 5
#: An interest at or above which a label says the object is interesting (the discovery curve, the bandit).
INTERESTING = 4
TAG = re.compile(r"^[A-Za-z0-9_-]{1,40}$")
USER = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
MAX_NOTE = 4000
MAX_RANKING = 100
TAG_SEPARATOR = ";"  # the tags of one object in one CSV cell: artefact;lens
BUSY_TIMEOUT_S = 30.0  # a writer waits this long for another one (writes take milliseconds)
INT64 = np.iinfo(np.int64)
FLOAT_EXACT = 2**53  # the largest magnitude below which a float64 holds every integer
LABEL, UNDO, IMPORT = "label", "undo", "import"
IMPORTED_BY = "import"  # the user of imported labels whose file names none
#: One row per object in `current` and in an export; an import reads object_id, interest, tags, note.
COLUMNS = ("object_id", "interest", "tags", "note", "user", "time", "ranking", "rank")
EXPORT_SCHEMA = pa.schema([("object_id", pa.int64()), ("interest", pa.int64()), ("tags", pa.list_(pa.string())),
                           ("note", pa.string()), ("user", pa.string()), ("time", pa.float64()),
                           ("ranking", pa.string()), ("rank", pa.int64())])

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    object_id INTEGER NOT NULL,
    kind TEXT NOT NULL CHECK (kind IN ('{LABEL}', '{UNDO}', '{IMPORT}')),
    interest INTEGER CHECK (interest BETWEEN 0 AND {MAX_INTEREST}),
    tags TEXT NOT NULL DEFAULT '[]',
    note TEXT NOT NULL DEFAULT '',
    user TEXT NOT NULL,
    time REAL NOT NULL,
    ranking TEXT,
    rank INTEGER,
    undoes INTEGER REFERENCES events (id)
);
CREATE INDEX IF NOT EXISTS events_undoes ON events (undoes);
CREATE INDEX IF NOT EXISTS events_user ON events (user, kind);
CREATE INDEX IF NOT EXISTS events_object ON events (object_id, id);
CREATE TRIGGER IF NOT EXISTS events_never_updated BEFORE UPDATE ON events
BEGIN SELECT RAISE(ABORT, 'the label log is append-only'); END;
CREATE TRIGGER IF NOT EXISTS events_never_deleted BEFORE DELETE ON events
BEGIN SELECT RAISE(ABORT, 'the label log is append-only'); END;
"""
_INSERT = ("INSERT INTO events (object_id, kind, interest, tags, note, user, time, ranking, rank, undoes) "
           "VALUES (:object_id, :kind, :interest, :tags, :note, :user, :time, :ranking, :rank, :undoes)")
# the labels in effect at :at as of event :upto: labels and imports made by then that no undo made by
# then cancels (events up to an id never change: the log is append-only and ids grow with each commit)
_EFFECTIVE = f"""
SELECT e.object_id, e.interest, e.tags, e.note, e.user, e.time, e.ranking, e.rank FROM events e
WHERE e.kind IN ('{LABEL}', '{IMPORT}') AND e.time <= :at AND e.id <= :upto
  AND NOT EXISTS (SELECT 1 FROM events u WHERE u.undoes = e.id AND u.time <= :at AND u.id <= :upto)
ORDER BY e.id
"""
_LAST_EVENT = "SELECT COALESCE(MAX(id), 0) FROM events WHERE time <= :at"
# one object's label in effect now (the index on object_id makes it a lookup, not a replay)
_LABEL_OF = f"""
SELECT e.id AS event, e.interest, e.tags, e.note, e.user, e.time FROM events e
WHERE e.object_id = ? AND e.kind IN ('{LABEL}', '{IMPORT}')
  AND NOT EXISTS (SELECT 1 FROM events u WHERE u.undoes = e.id)
ORDER BY e.id DESC LIMIT 1
"""
_LATEST_OF_USER = f"""
SELECT e.id, e.object_id FROM events e
WHERE e.kind = '{LABEL}' AND e.user = ? AND NOT EXISTS (SELECT 1 FROM events u WHERE u.undoes = e.id)
ORDER BY e.id DESC LIMIT 1
"""


class LabelStore:
    """The label log at `path` (created if absent). Safe to share between threads and processes."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._errors():
            self._connection().executescript(_SCHEMA)

    # -- writing ------------------------------------------------------------------------------------
    def add(self, object_id: int, interest: int | None = None, tags: Sequence[str] | str = (), note: str = "",
            user: str = "anonymous", ranking: str | None = None, rank: int | None = None) -> int:
        """Append a label (the object's whole state); returns its id once it is durable."""
        row = _label(object_id, interest, tags, note, user, ranking, rank)
        with self._transaction() as connection:
            return _insert(connection, LABEL, row)

    def undo(self, user: str = "anonymous") -> int | None:
        """Cancel `user`'s latest label not undone yet (an undo event); None when there is none."""
        user = _user(user, None)
        with self._transaction() as connection:
            latest = connection.execute(_LATEST_OF_USER, (user,)).fetchone()
            if latest is None:
                return None
            undone, object_id = latest
            return _insert(connection, UNDO, {"object_id": object_id, "user": user, "undoes": undone})

    def import_labels(self, path: str | Path, user: str) -> int:
        """Append every row of a label file as an imported label (`imported_rows`); returns the
        rows imported."""
        return self.append_imported(imported_rows(path, user))

    def append_imported(self, rows: list[dict]) -> int:
        """Append rows checked by `imported_rows` as import events, in one transaction."""
        with self._transaction() as connection:
            for row in rows:
                _insert(connection, IMPORT, row)
        return len(rows)

    # -- reading ------------------------------------------------------------------------------------
    def events(self) -> pd.DataFrame:
        """The whole log in the order it was written (tags as lists)."""
        with self._errors():
            frame = pd.read_sql_query("SELECT * FROM events ORDER BY id", self._connection())
        return _typed(frame)

    def current(self, at: float | None = None) -> pd.DataFrame:
        """One row per labelled object (`COLUMNS`), its label in effect at unix time `at` (default:
        now), by object id."""
        return self.snapshot(at)[0]

    def snapshot(self, at: float | None = None) -> tuple[pd.DataFrame, int]:
        """`current(at)` and the id of the last event it reflects (0 for an empty log): the state a
        re-ranked list was computed from, which later writes cannot change."""
        at = math.inf if at is None else at
        with self._errors():
            connection = self._connection()
            upto = int(connection.execute(_LAST_EVENT, {"at": at}).fetchone()[0])
            frame = pd.read_sql_query(_EFFECTIVE, connection, params={"at": at, "upto": upto})
        latest = frame.drop_duplicates("object_id", keep="last").sort_values("object_id")
        return _typed(latest.reset_index(drop=True)), upto

    def label(self, object_id: int) -> dict | None:
        """One object's label in effect now (event, interest, tags, note, user, time), or None."""
        with self._errors():
            row = self._connection().execute(_LABEL_OF, (int(object_id),)).fetchone()
        if row is None:
            return None
        event, interest, tags, note, user, made = row
        return {"event": event, "interest": interest, "tags": json.loads(tags), "note": note, "user": user,
                "time": made}

    def object_of(self, event: int) -> int | None:
        """The object an event (a label, an import or an undo) is about; None for an unknown id."""
        with self._errors():
            row = self._connection().execute("SELECT object_id FROM events WHERE id = ?", (int(event),)).fetchone()
        return None if row is None else int(row[0])

    def export(self, path: str | Path, at: float | None = None) -> int:
        """Write `current(at)` to a .csv (tags joined by ';') or .parquet file, atomically; returns rows."""
        path = Path(path)
        frame = self.current(at)
        if path.suffix == ".csv":
            write_csv(frame.assign(tags=frame.tags.map(TAG_SEPARATOR.join)), path, index=False)
        elif path.suffix == ".parquet":
            write_table(pa.Table.from_pandas(frame, schema=EXPORT_SCHEMA, preserve_index=False), path)
        else:
            raise FmbError(f"{path}: labels export as .csv or .parquet, not {path.suffix or 'a file without suffix'}")
        return len(frame)

    def close(self) -> None:
        """Close every thread's connection (the store opens new ones if used again)."""
        with self._lock:
            connections, self._connections = self._connections, []
            self._local = threading.local()
        for connection in connections:
            connection.close()

    # -- connections --------------------------------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        connection = getattr(self._local, "connection", None)
        if connection is None:
            # autocommit (isolation_level None): transactions are the explicit BEGIN ... COMMIT below
            connection = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                         check_same_thread=False)
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                connection.close()
                raise FmbError(f"label log {self.path}: its file system does not support SQLite's WAL journal "
                               f"(got {mode}); put the run on a local disk")
            connection.execute("PRAGMA synchronous=FULL")
            self._local.connection = connection
            with self._lock:
                self._connections.append(connection)
        return connection

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed (durably) on leaving, rolled back on any error."""
        with self._errors():
            connection = self._connection()
            connection.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.Error as error:  # a locked, corrupt or foreign file: one line, no traceback
            raise FmbError(f"label log {self.path}: {error}") from None


def _insert(connection: sqlite3.Connection, kind: str, row: dict) -> int:
    values = {"interest": None, "tags": "[]", "note": "", "ranking": None, "rank": None, "undoes": None, **row}
    return connection.execute(_INSERT, {**values, "kind": kind, "time": time.time()}).lastrowid


def _typed(frame: pd.DataFrame) -> pd.DataFrame:
    """Tags as lists; interest and rank as nullable integers."""
    frame = frame.copy()
    frame["tags"] = frame["tags"].map(json.loads)
    for column in ("interest", "rank", "undoes"):
        if column in frame:
            frame[column] = frame[column].astype("Int64")
    return frame


# -- checking one label -----------------------------------------------------------------------------
def imported_rows(path: str | Path, user: str | None = None, known=None) -> list[dict]:
    """The labels of a CSV, Parquet, FITS or VOTable file (object_id, interest, and optionally tags,
    note and user), each checked; `user` (default: each row's own, where the file has a user column,
    as an export does, else "import") is whose they are. One bad row refuses the whole file, and so
    does an object not among the `known` ids (the run's survey, when given): a label file of another
    survey would otherwise pair labels with nothing, or with the wrong objects."""
    from fmb.app.label_files import read_label_file  # here: it reads this module's columns

    path = Path(path)
    given = None if user is None else _user(user, None)
    rows = []
    for number, record in enumerate(read_label_file(path).to_dict("records"), start=1):
        try:
            own = record.get("user")
            rows.append(_label(record["object_id"], record["interest"], record.get("tags", ()),
                               record.get("note", ""), given or (IMPORTED_BY if _missing(own) or own == "" else own),
                               None, None))
            if known is not None and rows[-1]["object_id"] not in known:
                raise DataError(f"not in this run's survey ({len(known)} objects)",
                                object_id=rows[-1]["object_id"], field="object_id")
        except DataError as error:
            hint = " (or give them all one with --user)" if error.field == "user" and given is None else ""
            raise FmbError(f"{path}: row {number}: {error}{hint}") from None
    return rows


def _label(object_id, interest, tags, note, user, ranking, rank) -> dict:
    """A label's row, each field checked; DataError names the object and the field."""
    object_id = _integer(object_id, "object_id", None, INT64.min, INT64.max, "a 64-bit integer")
    interest = _optional_integer(interest, "interest", object_id, 0, MAX_INTEREST, f"an integer from 0 to {MAX_INTEREST}")
    row = {"object_id": object_id, "interest": interest, "tags": json.dumps(_tags(tags, object_id)),
           "note": _note(note, object_id), "user": _user(user, object_id), "ranking": _ranking(ranking, object_id),
           "rank": _optional_integer(rank, "rank", object_id, 1, INT64.max, "a rank of at least 1")}
    if row["interest"] is None and row["tags"] == "[]" and not row["note"]:
        raise DataError("a label needs an interest, a tag or a note", object_id=object_id, field="interest")
    return row


def _missing(value) -> bool:
    return value is None or (isinstance(value, (float, np.floating)) and math.isnan(value)) or value is pd.NA


def _integer(value, field: str, object_id: int | None, low: int, high: int, kind: str) -> int:
    integral = isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))
    # a CSV column with a blank cell is read as floats: 3.0 is the integer 3. Beyond 2^53 a float no
    # longer holds every integer (a survey's 17-digit ids among them): 39627007000000659.0 is ...656
    if isinstance(value, (float, np.floating)) and math.isfinite(value) and value == int(value):
        if abs(value) > FLOAT_EXACT:
            raise DataError(f"must be {kind}, got {value!r}: a floating-point number, which holds integers this "
                            "large only to within a few units; write it as an integer", object_id=object_id,
                            field=field)
        value, integral = int(value), True
    if not integral or not low <= int(value) <= high:
        raise DataError(f"must be {kind}, got {value!r}", object_id=object_id, field=field)
    return int(value)


def _optional_integer(value, field: str, object_id: int, low: int, high: int, kind: str) -> int | None:
    return None if _missing(value) else _integer(value, field, object_id, low, high, kind)


def _tags(value, object_id: int) -> list[str]:
    """Tags as a list, or one string of tags joined by ';' (a CSV cell); duplicates dropped."""
    if _missing(value):
        return []
    items = value.split(TAG_SEPARATOR) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple, np.ndarray)):
        raise DataError(f"must be a list of tags, got {value!r}", object_id=object_id, field="tags")
    tags = [tag.strip() if isinstance(tag, str) else tag for tag in items]
    bad = [tag for tag in tags if not (isinstance(tag, str) and (tag == "" or TAG.match(tag)))]
    if bad:
        raise DataError(f"tag {bad[0]!r} is not 1-40 letters, digits, _ or -", object_id=object_id, field="tags")
    return list(dict.fromkeys(tag for tag in tags if tag))


def _note(value, object_id: int) -> str:
    if _missing(value):
        return ""
    if not isinstance(value, str) or len(value) > MAX_NOTE:
        raise DataError(f"must be text of at most {MAX_NOTE} characters", object_id=object_id, field="note")
    return value


def _user(value, object_id: int | None) -> str:
    if not (isinstance(value, str) and USER.match(value)):
        raise DataError(f"must be 1-64 letters, digits, _ . @ or -, got {value!r}", object_id=object_id, field="user")
    return value


def _ranking(value, object_id: int) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 0 < len(value) <= MAX_RANKING:
        raise DataError(f"must be the name of a ranking, got {value!r}", object_id=object_id, field="ranking")
    return value

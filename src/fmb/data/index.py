"""The object index: `object_id -> (shard, row)` and the object's sky position, built by reading only
the id and coordinate columns.

`build_index` also catches what can be seen from ids alone: unreadable shards, rows without an id,
and duplicate ids (the first occurrence is indexed, later ones are recorded as rejects, so two
different objects never share an id downstream). `Fetcher` returns rows by id through the index,
reading only the row groups that hold them, and checks that each row it reads carries the id that
was asked for (a stale index is an error, never a silently wrong object).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.data.sources import MISSING_ID, Source
from fmb.data.validate import SKIPPED, Issue, RowChecker, Sample, row_id
from fmb.errors import DataError, FmbError
from fmb.io import write_json, write_table
from fmb.layout import DataFiles

INDEX_SCHEMA = pa.schema([("object_id", pa.int64()), ("shard", pa.string()), ("row", pa.int64()),
                          ("ra", pa.float64()), ("dec", pa.float64())])


@dataclass
class IndexResult:
    table: pa.Table
    issues: list[Issue]
    shards: dict[str, int]  # rows per readable shard


def build_index(source: Source, progress: Callable[[str], None] | None = None) -> IndexResult:
    """Index every shard of `source`; problems become issues (skipped rows/shards), not exceptions."""
    ids, shard_names, rows, shards, ras, decs = [], [], [], {}, [], []
    issues = [Issue(None, "file", f"passed over: {why}", SKIPPED, location=name) for name, why in source.passed_over.items()]
    for shard in source.shards():
        try:
            shard_ids = source.read_ids(shard)
            position = source.read_coordinates(shard)
        except (DataError, OSError, pa.ArrowException) as exc:
            issues.append(Issue(None, "file", f"unreadable shard {shard}: {exc}", SKIPPED, location=shard))
            continue
        finally:
            if progress:
                progress(shard)
        shards[shard] = len(shard_ids)
        missing = np.flatnonzero(shard_ids == MISSING_ID)
        issues += [Issue(None, "object_id", "missing, or not an int64 id", SKIPPED,
                         location=f"{shard}:{row}") for row in missing]
        present = np.flatnonzero(shard_ids != MISSING_ID)
        ids.append(shard_ids[present])
        rows.append(present)
        shard_names.append(np.full(len(present), shard, dtype=object))
        ra, dec = position if position is not None else (np.full(len(shard_ids), np.nan),) * 2
        ras.append(ra[present])
        decs.append(dec[present])
    frame = pd.DataFrame(
        {
            "object_id": np.concatenate(ids) if ids else np.array([], np.int64),
            "shard": np.concatenate(shard_names) if shard_names else np.array([], object),
            "row": np.concatenate(rows) if rows else np.array([], np.int64),
            "ra": np.concatenate(ras) if ras else np.array([], np.float64),
            "dec": np.concatenate(decs) if decs else np.array([], np.float64),
        }
    )
    duplicated = frame.duplicated("object_id", keep="first")
    if duplicated.any():
        first = frame[~duplicated].set_index("object_id")
        for dup in frame[duplicated].itertuples(index=False):
            kept = first.loc[dup.object_id]
            issues.append(
                Issue(
                    int(dup.object_id),
                    "object_id",
                    f"duplicate id; the row at {kept['shard']}:{kept['row']} is used",
                    SKIPPED,
                    location=f"{dup.shard}:{dup.row}",
                )
            )
        frame = frame[~duplicated]
    table = pa.Table.from_pandas(frame, schema=INDEX_SCHEMA, preserve_index=False)
    return IndexResult(table, issues, shards)


def save_index(result: IndexResult, directory: Path, source: Source) -> Path:
    """index.parquet, and index.json with what was indexed: the source, the revision a hub source
    resolved, and the sha256 of the source's content fingerprint (`Source.fingerprint`)."""
    files = DataFiles(directory)
    path = write_table(result.table, files.index)
    write_json({"source": source.description, "revision": source.revision(), "fingerprint": content_sha256(source),
                "objects": result.table.num_rows, "shards": result.shards}, files.index_meta)
    return path


def content_sha256(source: Source) -> str:
    """sha256 of what `source` serves now (its `fingerprint`)."""
    return hashlib.sha256(json.dumps(source.fingerprint(), sort_keys=True).encode()).hexdigest()


def indexed_content_sha256(directory: Path, source: Source) -> str:
    """The content sha256 recorded with the index, after checking the source still serves that
    content: rows read by index positions after the data changed would be other objects' rows."""
    meta_path = DataFiles(directory).index_meta
    try:
        meta = json.loads(meta_path.read_text())
        recorded, indexed = meta.get("fingerprint"), meta.get("source")
    except (OSError, ValueError, AttributeError):
        raise FmbError(f"{meta_path} is missing or corrupt; run `fmb data index` again") from None
    same = recorded == content_sha256(source)
    if not same and indexed is not None and indexed != source.description:
        raise FmbError(f"{source.description} is not the data this run indexed ({indexed}): rows read by that "
                       "index would be other objects' rows; use the run's source, or index this one "
                       "(`fmb data index --source ...`, best under a new --run)")
    if not same:  # the same place (a moved project keeps its index: its content decides), other data
        raise FmbError(f"the data of {source.description} changed since it was indexed; run `fmb data index` "
                       "again (stages that read it then start over on the new data)")
    return recorded


def verify_row_id(record: dict, expected: int, shard: str, row: int) -> None:
    """A row read by its index position must still carry the id the index has for it."""
    found = row_id(record)
    if found != expected:
        raise DataError(f"index is stale: {shard}:{row} now holds object {found}; re-run `fmb data index`",
                        object_id=expected)


def read_index_table(directory: Path) -> pa.Table:
    """The saved index of a run's data directory, or an error saying how to make it."""
    path = DataFiles(directory).index
    if not path.is_file():
        raise FmbError(f"no index at {path}; run `fmb data index` first")
    return pq.read_table(path)


class ObjectIndex:
    """Lookup of (shard, row) by object id, loaded from `index.parquet`, and each object's sky position
    (NaN where the source has none, or in an index built before positions were kept)."""

    def __init__(self, table: pa.Table):
        frame = table.to_pandas()
        self.ids = frame["object_id"].to_numpy()
        unknown = np.full(len(frame), np.nan)
        self.ra = frame["ra"].to_numpy(np.float64) if "ra" in frame else unknown
        self.dec = frame["dec"].to_numpy(np.float64) if "dec" in frame else unknown
        self._where = pd.Series(range(len(frame)), index=frame["object_id"])
        self._shards = frame["shard"].to_numpy()
        self._rows = frame["row"].to_numpy()

    @classmethod
    def load(cls, directory: Path) -> "ObjectIndex":
        return cls(read_index_table(directory))

    def __len__(self) -> int:
        return len(self.ids)

    def locate(self, object_ids: Iterable[int]) -> list[tuple[str, int]]:
        object_ids = list(object_ids)
        missing = [i for i in object_ids if i not in self._where.index]
        if missing:
            others = f", nor are {len(missing) - 1} more of the ids asked for" if len(missing) > 1 else ""
            examples = ", ".join(str(i) for i in self.ids[:2])
            raise DataError(f"not in the index{others} (its {len(self)} objects have ids such as {examples})",
                            object_id=missing[0])
        positions = self._where.loc[object_ids].to_numpy()
        return list(zip(self._shards[positions], self._rows[positions].tolist()))


class Fetcher:
    """Rows and checked samples by object id, through the index (no scans)."""

    def __init__(self, source: Source, index: ObjectIndex, checker: RowChecker | None = None):
        self.source, self.index, self.checker = source, index, checker or RowChecker()

    def rows(self, object_ids: Iterable[int]) -> list[dict]:
        object_ids = [int(i) for i in object_ids]
        by_shard: dict[str, list[tuple[int, int]]] = {}
        for position, (shard, row) in enumerate(self.index.locate(object_ids)):
            by_shard.setdefault(shard, []).append((position, row))
        out: list[dict | None] = [None] * len(object_ids)
        for shard, wanted in by_shard.items():
            for (position, row), record in zip(wanted, self.source.read_rows(shard, [row for _, row in wanted])):
                verify_row_id(record, object_ids[position], shard, row)
                out[position] = record
        return out

    def sample(self, object_id: int) -> tuple[Sample | None, list[Issue]]:
        return self.checker.check(self.rows([object_id])[0])

    def samples(self, object_ids: Iterable[int]) -> list[Sample | None]:
        """Checked samples in the order asked; None for an object that fails its checks."""
        return [self.checker.check(row)[0] for row in self.rows(object_ids)]

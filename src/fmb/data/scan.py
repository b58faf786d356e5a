"""Full passes over a source: checked samples in order, and the rejects table they leave.

The rejects table (`runs/<name>/data/rejects.parquet`) has one row per issue: the stage that found
it, object id, location (shard:row), field, reason and action. Each stage replaces its own rows.
"""

from __future__ import annotations

import dataclasses
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from fmb.data.sources import Source
from fmb.data.validate import DROPPED, REPAIRED, SKIPPED, Issue, RowChecker, Sample, row_id
from fmb.errors import DataError
from fmb.io import write_table

REJECTS_SCHEMA = pa.schema(
    [
        ("stage", pa.string()),
        ("object_id", pa.int64()),
        ("location", pa.string()),
        ("field", pa.string()),
        ("reason", pa.string()),
        ("action", pa.string()),
    ]
)


def iter_samples(
    source: Source,
    checker: RowChecker,
    issues: list[Issue],
    batch_size: int = 256,
    progress: Callable[[int], None] | None = None,
) -> Iterator[Sample]:
    """Every usable sample of every shard, in order; issues are appended to `issues`.

    An unreadable shard is one skipped issue and the pass goes on. As in the index
    (`fmb.data.index`), the first row of an id is the object: later rows with that id are skipped,
    even when the first one is itself unusable, so a pass yields only objects the index would fetch.
    """
    first_rows: dict[int, str] = {}  # id -> location of its first row
    for shard in source.shards():
        row_number = 0
        try:
            for rows in source.iter_rows(shard, batch_size):
                for row in rows:
                    location = f"{shard}:{row_number}"
                    sample, found = _check_first(checker, row, location, first_rows)
                    issues.extend(dataclasses.replace(issue, location=location) for issue in found)
                    row_number += 1
                    if sample is not None:
                        yield sample
                if progress:
                    progress(len(rows))
        except (OSError, pa.ArrowException) as exc:
            issues.append(Issue(None, "file", f"unreadable shard {shard} after row {row_number}: {exc}", SKIPPED, shard))
        except DataError as exc:
            if checker.config.on_invalid == "error" or exc.field != shard:
                raise
            issues.append(Issue(None, "file", str(exc), SKIPPED, shard))


def _check_first(
    checker: RowChecker, row: dict, location: str, first_rows: dict[int, str]
) -> tuple[Sample | None, list[Issue]]:
    """`checker.check(row)`, unless an earlier row carried the same id."""
    object_id = row_id(row)
    if object_id in first_rows:
        return checker.skip(object_id, "object_id", f"duplicate of the row at {first_rows[object_id]}")
    if object_id is not None:
        first_rows[object_id] = location
    return checker.check(row)


def summarize(issues: list[Issue], n_samples: int) -> dict:
    actions = Counter(issue.action for issue in issues)
    return {
        "usable_objects": n_samples,
        "skipped_objects": actions[SKIPPED],
        "modalities_dropped": actions[DROPPED],
        "repairs": actions[REPAIRED],
        "issues_by_field": dict(Counter(issue.field for issue in issues if issue.action != "noted")),
    }


def write_rejects(path: Path, stage: str, issues: list[Issue]) -> Path:
    """Replace `stage`'s rows of the rejects table at `path` with `issues`."""
    rows = [
        {"stage": stage, "object_id": issue.object_id, "location": issue.location, "field": issue.field,
         "reason": issue.reason, "action": issue.action}
        for issue in issues
    ]
    table = pa.Table.from_pylist(rows, schema=REJECTS_SCHEMA)
    if path.is_file():
        previous = pq.read_table(path)
        keep = pc.not_equal(previous.column("stage"), stage)
        table = pa.concat_tables([previous.filter(keep).cast(REJECTS_SCHEMA), table])
    return write_table(table, path)

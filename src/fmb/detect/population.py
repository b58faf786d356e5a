"""Out-of-core queries over a run's score tables: the merge's population columns, the cross-model
consensus, the critic's agreement and the duplicate check.

These are the steps that place an object among all the others (ranks, percentiles, joins by id),
so they must see every object. DuckDB runs them: it sorts and joins out of core, holding at most
`executor.merge_memory_gb` and spilling the rest to a directory under the run that fmb makes and
removes. Memory is bounded whatever the number of objects; the results are streamed back in
batches and written part by part.

A DuckDB connection refuses every query while an earlier result is not read to its end (a
one-row `fetchone` included). So every query here goes through `rows` (read whole) or `stream`
(a reader closed when its `with` block ends, read through or not): no step can leave the
connection busy for the next.

Each score column is ranked by its own narrow query (row place, value) into a spill file, and the
files are read back in step: one query with a window per column chains DuckDB's window operators,
each re-sorting every column carried so far (30 s against 5 s for 26 columns of 1M objects).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.detect.fusion import check_fusion_inputs, fusion_columns, uplift
from fmb.detect.scores import COMMON_SET, UPLIFT, fusion_inputs, rank_column, ranked_columns
from fmb.errors import FmbError
from fmb.io import row_groups
from fmb.layout import MergeFiles

BATCH_ROWS = 65_536  # rows per streamed batch: a few MB of population columns
ROW_GROUP_ROWS = 122_880  # rows per row group of a spill file (DuckDB's default), the unit read back


@contextmanager
def connection(memory_gb: float, spill: Path) -> Iterator:
    """A DuckDB connection held to `memory_gb`, spilling under `spill`, a directory that is removed
    afterwards (fmb's own: the layout's `scores/spill`)."""
    import duckdb

    con = duckdb.connect(config={"memory_limit": f"{memory_gb}GB"})  # keeps insertion order: ordered COPY
    con.execute(f"SET temp_directory = {quote_literal(str(spill))}")
    try:
        yield con
    finally:
        con.close()
        shutil.rmtree(spill, ignore_errors=True)


def quote(name: str) -> str:
    """A column name as an SQL identifier."""
    return '"' + name.replace('"', '""') + '"'


def quote_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def population_parts(con, paths: list[Path], method: str, spill: MergeFiles) -> Iterator[pa.Table]:
    """For each score part in order: object_id, then the columns that place its objects among all
    the parts' objects (pct_/rank_ of every score column, the percentile fusions, uplift,
    in_common_set). Each column's ranks are one narrow out-of-core sort written to `spill`; the
    formulas (`fmb.detect.fusion`) then run part by part on the ranks read back in step."""
    columns = ranked_columns(pq.read_schema(paths[0]).names)
    check_fusion_inputs(columns, method)
    spill.dir.mkdir(parents=True, exist_ok=True)
    source = parquet_source(paths, ["object_id", *columns])
    finite = " AND ".join(f"coalesce(isfinite({quote(c)}), false)" for c in columns)
    n = rows(con, f"SELECT count(*) FROM {source} WHERE {finite}")[0][0]
    rank_files = {column: _rank_file(con, f"(SELECT *, {quote(column)} AS value, {finite} AS common FROM {source})",
                                     spill.ranks(k), with_ids=k == 0)
                  for k, column in enumerate(columns)}
    part_rows = [pq.ParquetFile(path).metadata.num_rows for path in paths]
    geo = _geo_file(rank_files, part_rows, n, method, spill.fused_geo)
    geo_ranks = _rank_file(con, f"(SELECT 0 AS file_index, file_row_number, value, isfinite(value) AS common "
                                f"FROM read_parquet({quote_literal(str(geo))}, file_row_number = true))",
                           spill.fused_geo_ranks)
    streams = {column: Slicer(_batches(path)) for column, path in rank_files.items()}
    geo_stream = Slicer(_batches(geo_ranks))
    try:
        for count in part_rows:
            taken = {column: slicer.take(count) for column, slicer in streams.items()}
            added = fusion_columns({column: _values(table) for column, table in taken.items()}, n, method)
            added[UPLIFT] = uplift(added, _values(geo_stream.take(count)), n, method)
            added[COMMON_SET] = np.isfinite(added[rank_column(columns[0])])
            yield pa.table({"object_id": taken[columns[0]].column("object_id"),
                            **{name: _arrow(name, values) for name, values in added.items()}})
    finally:  # also when the caller stops early or closes the generator
        shutil.rmtree(spill.dir, ignore_errors=True)


def _rank_file(con, source: str, path: Path, with_ids: bool = False) -> Path:
    """One column's ranks (the ranking rule: rank() over a descending order, among the `common`
    rows; null elsewhere) in `source`'s row order (file_index, file_row_number), out of core."""
    ids = "object_id, " if with_ids else ""
    con.execute(f"COPY (SELECT {ids}CASE WHEN common THEN rank() OVER (PARTITION BY common ORDER BY value DESC) "
                f"END::DOUBLE AS rank FROM {source} ORDER BY file_index, file_row_number) "
                f"TO {quote_literal(str(path))} (FORMAT parquet, ROW_GROUP_SIZE {ROW_GROUP_ROWS})")
    return path


def _geo_file(rank_files: dict[str, Path], rows: list[int], n: int, method: str, path: Path) -> Path:
    """fused_geo of every object, in the parts' order, from its inputs' ranks: what uplift ranks."""
    inputs = {column: Slicer(_batches(rank_files[column])) for column in fusion_inputs(method)}
    with pq.ParquetWriter(path, pa.schema([("value", pa.float64())])) as writer:
        for count in rows:
            ranks = {column: _values(slicer.take(count)) for column, slicer in inputs.items()}
            writer.write_table(pa.table({"value": fusion_columns(ranks, n, method)["fused_geo"]}),
                               row_group_size=ROW_GROUP_ROWS)
    return path


def _batches(path: Path) -> Iterator[pa.RecordBatch]:
    """A spill file's rows one row group at a time: the merge reads ~30 of them in step."""
    for group in row_groups(path):
        yield from group.to_batches()


def _values(table: pa.Table) -> np.ndarray:
    """The rank column as floats, NaN where it is null (outside the common set)."""
    return np.asarray(table.column("rank").to_numpy(zero_copy_only=False), dtype=float)


def _arrow(name: str, values: np.ndarray) -> pa.Array:
    """A population column as the score table stores it: nulls outside the common set, ranks as
    integers."""
    missing = np.isnan(values) if values.dtype.kind == "f" else None
    if name.startswith("rank_"):
        return pa.array(np.where(missing, 0, values).astype(np.int64), mask=missing)
    return pa.array(values, mask=missing)


def parquet_source(paths: list[Path], columns: list[str]) -> str:
    """The `columns` of these Parquet files in order, with each row's place: file_index (the position
    in `paths`) and file_row_number."""
    files = ", ".join(quote_literal(str(path)) for path in paths)
    return (f"(SELECT file_index, file_row_number, {', '.join(quote(c) for c in columns)} "
            f"FROM read_parquet([{files}], file_row_number = true))")


def rows(con, sql: str) -> list[tuple]:
    """Every row of a query, read to its end (a `fetchone` leaves the result open)."""
    return con.execute(sql).fetchall()


@contextmanager
def stream(con, sql: str) -> Iterator[pa.RecordBatchReader]:
    """A query's result in batches of `BATCH_ROWS`; closed when the block ends, whether or not it
    was read through, so the connection is free for the next query."""
    reader = con.sql(sql).to_arrow_reader(BATCH_ROWS)
    try:
        yield reader
    finally:
        reader.close()


class Slicer:
    """Hands out a stream of record batches as tables of the lengths asked for, in order."""

    def __init__(self, reader: pa.RecordBatchReader):
        self._batches, self._held, self._rows = iter(reader), [], 0

    def take(self, rows: int) -> pa.Table:
        while self._rows < rows:
            batch = next(self._batches, None)
            if batch is None:
                raise FmbError(f"the merge query ended {rows - self._rows} rows short of the parts")
            self._held.append(batch)
            self._rows += len(batch)
        held = pa.Table.from_batches(self._held).combine_chunks()
        self._held = [batch for batch in held.slice(rows).to_batches() if len(batch)]
        self._rows -= rows
        return held.slice(0, rows)


def first_duplicate(con, source: str) -> tuple[int, int] | None:
    """(object id, count) of the lowest id that occurs more than once in `source`, else None."""
    found = rows(con, f"SELECT object_id, count(*) AS n FROM {source} GROUP BY object_id HAVING n > 1 "
                 "ORDER BY object_id LIMIT 1")
    return (int(found[0][0]), int(found[0][1])) if found else None


def spearman(con, source: str, a: str, b: str) -> float:
    """Spearman's rank correlation of two columns over the rows where both are finite (average
    ranks for ties, as scipy's)."""
    def average_rank(column: str) -> str:
        # rank() is the first of the tied group's places and count(*) (default frame: every row up
        # to the current one's last peer) the last; their mean is the average rank
        return f"(rank() OVER (ORDER BY {quote(column)}) + count(*) OVER (ORDER BY {quote(column)})) / 2.0"

    finite = f"isfinite({quote(a)}) AND isfinite({quote(b)})"
    value = rows(con, f"SELECT corr(ra, rb) FROM (SELECT {average_rank(a)} AS ra, {average_rank(b)} AS rb "
                      f"FROM {source} WHERE {finite})")[0][0]
    return float("nan") if value is None else float(value)

"""A directory tree of Parquet files in the row contract (what `fmb data synth` writes)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.config import DataConfig
from fmb.data.schema import sky_columns
from fmb.data.sources.base import ID_COLUMNS, MODALITY_COLUMNS, Source, coordinates_from_table, ids_from_table, table_to_rows
from fmb.errors import ConfigError, DataError
from fmb.io import parquet_footer_sha256
from fmb.layout import SurveyLayout


class ParquetSource(Source):
    """A directory tree of Parquet files in the row contract.

    A file belongs to the data when its schema has an id column and at least one modality
    column, so a catalog or truth table living beside the parts is not mistaken for data. Any other
    file passed over is said (`passed_over`), with why: a data file whose columns are named
    otherwise would else vanish from the survey without a word.
    """

    def __init__(self, directory: Path, config: DataConfig | None = None):
        if not directory.is_dir():
            raise ConfigError(f"data source {directory} is not a directory (run `fmb data synth` or set data.source)")
        self.directory = directory
        self.description = f"Parquet directory {directory}"
        found = {path: _not_data(path) for path in sorted(directory.rglob("*.parquet"))}
        self._files = [path for path, why in found.items() if why is None]
        survey = SurveyLayout(directory)
        self.passed_over = {str(path.relative_to(directory)): why for path, why in found.items()
                            if why is not None and path not in (survey.catalog, survey.truth)}
        self._last_open: tuple[str, pq.ParquetFile] | None = None

    def shards(self) -> list[str]:
        return [str(path.relative_to(self.directory)) for path in self._files]

    def read_ids(self, shard: str) -> np.ndarray:
        file = self._open(shard)
        columns = [name for name in ID_COLUMNS if name in file.schema_arrow.names]
        table = file.read(columns=columns)
        return ids_from_table(table, shard)

    def read_coordinates(self, shard: str) -> tuple[np.ndarray, np.ndarray] | None:
        file = self._open(shard)
        columns = sky_columns(file.schema_arrow.names)
        return None if columns is None else coordinates_from_table(file.read(columns=list(columns)))

    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]:
        file = self._open(shard)
        starts = np.cumsum([0] + [file.metadata.row_group(i).num_rows for i in range(file.num_row_groups)])
        wanted = np.asarray(rows, dtype=np.int64)
        if len(wanted) and (wanted.min() < 0 or wanted.max() >= starts[-1]):
            raise DataError(f"row {wanted.max()} beyond the {starts[-1]} rows of {shard}; re-run `fmb data index`")
        group_of = np.searchsorted(starts, wanted, side="right") - 1
        groups = np.unique(group_of)
        table = file.read_row_groups(groups.tolist())
        # position of each selected group's first row inside the concatenated table
        base = dict(zip(groups.tolist(), np.cumsum(np.r_[0, starts[groups + 1] - starts[groups]])[:-1].tolist()))
        local = [base[g] + int(r - starts[g]) for r, g in zip(wanted, group_of.tolist())]
        return table_to_rows(table.take(pa.array(local, type=pa.int64())))

    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]:
        for batch in self._open(shard).iter_batches(batch_size=batch_size):
            yield table_to_rows(pa.Table.from_batches([batch]))

    def fingerprint(self) -> dict:
        """Each data file by the sha256 of its Parquet footer (not its mtime: a touched file is the same data)."""
        return {"kind": "parquet", "files": {shard: parquet_footer_sha256(self.directory / shard)
                                             for shard in self.shards()}}

    def default_catalog(self) -> Path | None:
        candidate = SurveyLayout(self.directory).catalog
        return candidate if candidate.is_file() else None

    def _open(self, shard: str) -> pq.ParquetFile:
        # batches of one unit read the same file in turn: keep the last one open (per process)
        if self._last_open is None or self._last_open[0] != shard:
            try:
                self._last_open = (shard, pq.ParquetFile(self.directory / shard))
            except (OSError, pa.ArrowException) as exc:
                raise DataError(f"unreadable Parquet file: {exc}", field=shard) from None
        return self._last_open[1]

    def __getstate__(self) -> dict:  # open file handles stay in their process
        return {**self.__dict__, "_last_open": None}


def _not_data(path: Path) -> str | None:
    """Why a Parquet file is not part of the data (None: it is)."""
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException):
        return None  # unreadable: keep it, so indexing reports it instead of silently skipping data
    if not names & set(ID_COLUMNS):
        return f"no id column ({' or '.join(ID_COLUMNS)})"
    if not names & MODALITY_COLUMNS:
        return (f"none of the modality columns ({', '.join(sorted(MODALITY_COLUMNS))}); its columns: "
                f"{', '.join(sorted(names)[:12])}{' ...' if len(names) > 12 else ''}")
    return None

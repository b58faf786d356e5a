"""Where rows come from. Every source has the same small interface:

* ``shards()``             names of its units of storage (Parquet files, dataset splits, FITS files);
* ``read_ids(shard)``      the object ids of a shard in row order, reading nothing but the ids;
* ``read_rows(shard, rows)`` the contract rows at given positions (random access, for the fetcher);
* ``iter_rows(shard)``     all rows of a shard in order, in batches (for full passes).

`open_source` turns the configured `data.source` string into one of them.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.config import DataConfig, ResolvedConfig
from fmb.data.schema import BAND_COLUMNS, RGB_COLUMN
from fmb.errors import ConfigError, DataError

_MODALITY_COLUMNS = {"spectrum", RGB_COLUMN, *BAND_COLUMNS}
_ID_COLUMNS = ("object_id", "targetid")


class Source(ABC):
    """A collection of contract rows split into shards."""

    description: str

    @abstractmethod
    def shards(self) -> list[str]: ...

    @abstractmethod
    def read_ids(self, shard: str) -> np.ndarray:
        """Object ids in row order as int64; rows without an id hold `MISSING_ID`."""

    @abstractmethod
    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]: ...

    @abstractmethod
    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]: ...

    def default_catalog(self) -> Path | None:
        return None


MISSING_ID = np.iinfo(np.int64).min


def open_source(config: ResolvedConfig, spec: str | None = None) -> Source:
    """The source named by `spec` (default: ``data.source``): ``hf:<id>``, ``desi:<dir>`` or a Parquet dir."""
    spec = spec or config.data.source
    kind, sep, rest = spec.partition(":")
    if sep and kind == "hf":
        from fmb.data.hf import HuggingFaceSource

        local = config.path(rest)
        return HuggingFaceSource(str(local) if local.exists() else rest, config.data)
    if sep and kind == "desi":
        from fmb.data.desi_source import DesiSource

        if not config.data.cutouts:
            raise ConfigError("a desi: source needs data.cutouts, the directory of <TARGETID>.fits cutouts")
        return DesiSource(config.path(rest), config.path(config.data.cutouts))
    return ParquetSource(config.path(spec), config.data)


class ParquetSource(Source):
    """A directory tree of Parquet files in the row contract.

    A file belongs to the data when its schema has an id column and at least one modality
    column, so a catalog or truth table living beside the parts is not mistaken for data.
    """

    def __init__(self, directory: Path, config: DataConfig | None = None):
        if not directory.is_dir():
            raise ConfigError(f"data source {directory} is not a directory (run `fmb data synth` or set data.source)")
        self.directory = directory
        self.description = f"Parquet directory {directory}"
        self._files = [path for path in sorted(directory.rglob("*.parquet")) if _is_data_file(path)]
        self._last_open: tuple[str, pq.ParquetFile] | None = None

    def shards(self) -> list[str]:
        return [str(path.relative_to(self.directory)) for path in self._files]

    def read_ids(self, shard: str) -> np.ndarray:
        file = self._open(shard)
        columns = [name for name in _ID_COLUMNS if name in file.schema_arrow.names]
        table = file.read(columns=columns)
        return ids_from_table(table, shard)

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

    def default_catalog(self) -> Path | None:
        candidate = self.directory / "catalog.parquet"
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


def _is_data_file(path: Path) -> bool:
    try:
        names = set(pq.read_schema(path).names)
    except (OSError, pa.ArrowException):
        return True  # unreadable: keep it, so indexing reports it instead of silently skipping data
    return bool(names & set(_ID_COLUMNS)) and bool(names & _MODALITY_COLUMNS)


def ids_from_table(table: pa.Table, shard: str) -> np.ndarray:
    ids = np.full(table.num_rows, MISSING_ID, dtype=np.int64)
    for name in reversed(_ID_COLUMNS):  # object_id wins over targetid where both exist
        if name in table.column_names:
            column = table.column(name).combine_chunks()
            if not pa.types.is_integer(column.type):
                raise DataError(f"id column {name} has type {column.type}, expected int64", field=f"{shard}:{name}")
            valid = column.is_valid().to_numpy(zero_copy_only=False)
            ids[valid] = column.filter(column.is_valid()).to_numpy()
    return ids


# -- Arrow -> row dicts with numpy arrays (no per-pixel Python objects) ------------------------------
def table_to_rows(table: pa.Table) -> list[dict]:
    """Rows of a contract table; 2-D images become float32 arrays, spectra dicts of arrays."""
    columns: dict[str, list] = {}
    for name in table.column_names:
        column = table.column(name).combine_chunks()
        if isinstance(column.type, pa.ExtensionType):  # datasets' Array2D and friends
            column = column.storage
        if name in BAND_COLUMNS:
            columns[name] = _decode_nested_lists(column)
        elif name == "spectrum":
            columns[name] = _decode_struct_of_lists(column)
        else:
            columns[name] = column.to_pylist()
    return [dict(zip(columns, values)) for values in zip(*columns.values())]


def _decode_nested_lists(column: pa.Array) -> list:
    """list<list<float>> -> a 2-D float32 array per row (a list of rows when ragged, None when null)."""
    if not pa.types.is_list(column.type) and not pa.types.is_large_list(column.type):
        return column.to_pylist()
    outer = column.offsets.to_numpy()
    inner_lists = column.values
    if not (pa.types.is_list(inner_lists.type) or pa.types.is_large_list(inner_lists.type)):
        return column.to_pylist()
    inner = inner_lists.offsets.to_numpy()
    values = inner_lists.values.to_numpy(zero_copy_only=False).astype(np.float32, copy=False)
    null = column.is_null().to_numpy(zero_copy_only=False)
    out = []
    for i in range(len(column)):
        if null[i]:
            out.append(None)
            continue
        starts = inner[outer[i] : outer[i + 1] + 1]
        lengths = np.diff(starts)
        if len(lengths) and np.all(lengths == lengths[0]):
            out.append(values[starts[0] : starts[-1]].reshape(len(lengths), lengths[0]))
        else:
            out.append([values[a:b] for a, b in zip(starts[:-1], starts[1:])])
    return out


def _decode_struct_of_lists(column: pa.Array) -> list:
    """struct{flux, wavelength, error: list<float>} -> dict of float arrays per row."""
    if not pa.types.is_struct(column.type):
        return column.to_pylist()
    null = column.is_null().to_numpy(zero_copy_only=False)
    parts = {}
    for index, child in enumerate(column.flatten()):  # flatten() honours slicing, field() does not
        name = column.type.field(index).name
        if pa.types.is_list(child.type) or pa.types.is_large_list(child.type):
            offsets = child.offsets.to_numpy()
            values = child.values.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
            child_null = child.is_null().to_numpy(zero_copy_only=False)
            parts[name] = [None if child_null[i] else values[offsets[i] : offsets[i + 1]] for i in range(len(child))]
        else:
            parts[name] = child.to_pylist()
    return [None if null[i] else {name: part[i] for name, part in parts.items()} for i in range(len(column))]

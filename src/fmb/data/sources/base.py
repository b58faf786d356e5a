"""What every source of rows is: the `Source` interface, the Arrow -> row-dict decoding that the
Parquet, Hugging Face and Arrow-cache sources share, and `DatasetSource`: rows served from
`datasets.Dataset` splits (the hub dataset's cached splits, `save_to_disk` folders).

* ``shards()``               names of its units of storage (Parquet files, dataset splits, FITS files);
* ``read_ids(shard)``        the object ids of a shard in row order, reading nothing but the ids;
* ``read_rows(shard, rows)`` the contract rows at given positions (random access, for the fetcher);
* ``iter_rows(shard)``       all rows of a shard in order, in batches (for full passes);
* ``read_coordinates(shard)`` RA and Dec of a shard's rows in row order (degrees, NaN unknown), or
                             None when the source has none (the index keeps them beside the ids);
* ``fingerprint()``          a cheap identity of the content it serves (stage keys);
* ``revision()``             the revision a hub source resolved to, else None (recorded in the index).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

from fmb.data.schema import BAND_COLUMNS, RGB_COLUMN, checked_sky, sky_columns
from fmb.errors import DataError

MODALITY_COLUMNS = {"spectrum", RGB_COLUMN, *BAND_COLUMNS}
ID_COLUMNS = ("object_id", "targetid")


class Source(ABC):
    """A collection of contract rows split into shards."""

    description: str
    passed_over: dict[str, str] = {}  # files beside the shards that are not data, by name: why (read only)

    @abstractmethod
    def shards(self) -> list[str]: ...

    @abstractmethod
    def read_ids(self, shard: str) -> np.ndarray:
        """Object ids in row order as int64; rows without an id hold `MISSING_ID`."""

    @abstractmethod
    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]: ...

    @abstractmethod
    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]: ...

    @abstractmethod
    def fingerprint(self) -> dict:
        """JSON-able and cheap: changes whenever the rows it would serve can have changed."""

    def read_coordinates(self, shard: str) -> tuple[np.ndarray, np.ndarray] | None:
        """RA and Dec of the shard's rows in `read_ids`' order (degrees, NaN where unknown); None when
        the source carries no positions."""
        return None

    def revision(self) -> str | None:
        return None

    def default_catalog(self) -> Path | None:
        return None


MISSING_ID = np.iinfo(np.int64).min


def ids_from_table(table: pa.Table, shard: str) -> np.ndarray:
    """Object ids in row order: object_id where present, else targetid; `MISSING_ID` where a row has
    neither, or where the id it has does not fit int64 (it is then not replaced by targetid: the row
    checker refuses such a row too, and both must file it the same way)."""
    ids = np.full(table.num_rows, MISSING_ID, dtype=np.int64)
    for name in reversed(ID_COLUMNS):  # object_id wins over targetid where both exist
        if name in table.column_names:
            present, values = _int64_ids(table.column(name).combine_chunks(), f"{shard}:{name}")
            ids[present] = values[present]
    return ids


def coordinates_from_table(table: pa.Table) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec of a table with a pair of `fmb.data.schema.COORDINATE_COLUMNS` (checked: NaN where
    unusable)."""
    ra, dec = sky_columns(table.column_names)
    values = [table.column(name).cast(pa.float64()).fill_null(np.nan).to_numpy() for name in (ra, dec)]
    return checked_sky(*values)


def _int64_ids(column: pa.Array, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not pa.types.is_integer(column.type):
        raise DataError(f"id column has type {column.type}, expected int64 (cast it: a float rounds 17-digit ids, "
                        "text is not an id)", field=where)
    present = column.is_valid().to_numpy(zero_copy_only=False)
    raw = column.fill_null(0).to_numpy()
    if raw.dtype != np.uint64:
        return present, raw.astype(np.int64)
    values = np.full(len(raw), MISSING_ID, dtype=np.int64)  # beyond int64 a uint64 would wrap to another id
    fits = raw <= np.uint64(np.iinfo(np.int64).max)
    values[fits] = raw[fits].astype(np.int64)
    return present, values


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


# -- rows from `datasets.Dataset` objects (memory-mapped Arrow) -----------------------------------
class DatasetSource(Source):
    """A source whose shards are `datasets.Dataset` objects: ids and rows by position straight from
    their memory-mapped Arrow tables, decoded by `table_to_rows` (the one field mapping), the RGB
    composite kept as its encoded bytes (fmb decodes and checks it). Subclasses say how a shard loads."""

    def __init__(self):
        self._loaded: dict = {}

    @abstractmethod
    def _load(self, shard: str):
        """The `datasets.Dataset` of one shard (errors as `ConfigError` or `DataError`, one line)."""

    def _split(self, shard: str):
        if shard not in self._loaded:
            self._loaded[shard] = keep_encoded_rgb(self._load(shard))
        return self._loaded[shard]

    def read_ids(self, shard: str) -> np.ndarray:
        data = self._split(shard)
        names = [name for name in ID_COLUMNS if name in data.column_names]
        return ids_from_table(data.with_format("arrow").select_columns(names)[:], shard)

    def read_coordinates(self, shard: str) -> tuple[np.ndarray, np.ndarray] | None:
        data = self._split(shard)
        columns = sky_columns(data.column_names)
        return None if columns is None else coordinates_from_table(data.with_format("arrow").select_columns(list(columns))[:])

    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]:
        return table_to_rows(self._split(shard).with_format("arrow")[list(map(int, rows))])

    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]:
        data = self._split(shard).with_format("arrow")
        for start in range(0, len(data), batch_size):
            yield table_to_rows(data[start : start + batch_size])


def keep_encoded_rgb(data):
    """A `datasets` dataset (cached or streamed) whose RGB column stays encoded bytes when read."""
    import datasets

    if RGB_COLUMN in (data.features or {}):
        data = data.cast_column(RGB_COLUMN, datasets.Image(decode=False))
    return data

"""Rows from a Hugging Face dataset through `datasets` (default: the Euclid Q1 x DESI DR1 set).

Cached mode (`load_dataset(id, split)`) downloads once into the HF cache and then serves ids and
rows by position from memory-mapped Arrow. Streaming mode reads on the fly: full passes work,
fetching a single object by id does not (that would be a linear scan) and says so.

With network: `fmb data index --source hf:msiudek/astroPT_euclid_Q1_desi_dr1_dataset`.
Offline (`HF_HUB_OFFLINE=1`, `HF_DATASETS_OFFLINE=1`): the same call uses what is in the cache, and
`hf:<local dir>` loads a dataset directory laid out like the hub repository (`data/<split>-*.parquet`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
import numpy as np
import pyarrow as pa

from fmb.config import DataConfig
from fmb.data.schema import RGB_COLUMN
from fmb.data.sources import Source, ids_from_table, table_to_rows
from fmb.errors import ConfigError, DataError


class HuggingFaceSource(Source):
    def __init__(self, dataset: str, config: DataConfig):
        self.dataset = dataset
        self.splits = list(config.splits)
        self.streaming = config.streaming
        mode = "streaming" if self.streaming else "cached"
        self.description = f"Hugging Face dataset {dataset} ({mode}, splits {', '.join(self.splits)})"
        self._loaded: dict = {}

    def shards(self) -> list[str]:
        return list(self.splits)

    def read_ids(self, shard: str) -> np.ndarray:
        if self.streaming:
            tables = [table for table in self._stream(shard, 4096, columns=["object_id"])]
            return ids_from_table(pa.concat_tables(tables) if tables else pa.table({"object_id": pa.array([], pa.int64())}), shard)
        data = self._split(shard)
        names = [name for name in ("object_id", "targetid") if name in data.column_names]
        return ids_from_table(data.with_format("arrow").select_columns(names)[:], shard)

    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]:
        if self.streaming:
            raise DataError(
                "fetching objects by id needs random access; set data.streaming=false to cache the dataset",
                field=shard,
            )
        table = self._split(shard).with_format("arrow")[list(map(int, rows))]
        return table_to_rows(table)

    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]:
        if self.streaming:
            for table in self._stream(shard, batch_size):
                yield table_to_rows(table)
            return
        data = self._split(shard).with_format("arrow")
        for start in range(0, len(data), batch_size):
            yield table_to_rows(data[start : start + batch_size])

    def _stream(self, shard: str, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        stream = self._load(shard)
        if columns:
            stream = stream.select_columns(columns)
        for batch in stream.with_format("arrow").iter(batch_size=batch_size):
            yield batch

    def _split(self, shard: str):
        if shard not in self._loaded:
            self._loaded[shard] = self._load(shard)
        return self._loaded[shard]

    def _load(self, split: str):
        import datasets

        try:
            data = datasets.load_dataset(self.dataset, split=split, streaming=self.streaming)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
            raise ConfigError(
                f"cannot load Hugging Face dataset {self.dataset!r} split {split!r}: {exc}. Offline, the dataset "
                "must already be in the HF cache (or pass hf:<local dataset dir>)."
            ) from None
        if RGB_COLUMN in (data.features or {}):  # keep the encoded bytes; fmb decodes and checks them
            data = data.cast_column(RGB_COLUMN, datasets.Image(decode=False))
        return data

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
from pathlib import Path

import numpy as np
import pyarrow as pa

from fmb.config import DataConfig
from fmb.data.hub import hub_or_cache
from fmb.data.sources.base import DatasetSource, ids_from_table, keep_encoded_rgb, table_to_rows
from fmb.errors import ConfigError, DataError
from fmb.io import parquet_footer_sha256


class HuggingFaceSource(DatasetSource):
    def __init__(self, dataset: str, config: DataConfig):
        super().__init__()
        if not Path(dataset).is_dir():
            _check_hub_id(dataset)
        self.dataset = dataset
        self.splits = list(config.splits)
        self.streaming = config.streaming
        mode = "streaming" if self.streaming else "cached"
        self.description = f"Hugging Face dataset {dataset} ({mode}, splits {', '.join(self.splits)})"

    def shards(self) -> list[str]:
        return list(self.splits)

    def fingerprint(self) -> dict:
        """The dataset, its splits and mode, and the revision it resolved: a local dataset directory by
        its Parquet footers, a hub id by the commit its offline cache holds (None, with a note, when
        the cache has none)."""
        identity = {"kind": "hf", "dataset": self.dataset, "splits": self.splits, "streaming": self.streaming}
        local = self._local_dir()
        if local is not None:
            return identity | {"revision": None, "files": {str(p.relative_to(local)): parquet_footer_sha256(p)
                                                           for p in sorted(local.rglob("*.parquet"))}}
        revision = self.revision()
        note = {} if revision else {"note": "not in the local Hugging Face hub cache; revision unknown offline"}
        return identity | {"revision": revision} | note

    def revision(self) -> str | None:
        """The commit of the hub dataset in the local cache (what an offline load resolves), else None."""
        if self._local_dir() is not None:
            return None
        from huggingface_hub import constants
        from huggingface_hub.file_download import repo_folder_name

        repo = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=self.dataset, repo_type="dataset")
        ref = repo / "refs" / "main"  # what `load_dataset` (revision main) resolves offline
        if not ref.is_file():
            return None
        return ref.read_text().strip() or None

    def _local_dir(self) -> Path | None:
        local = Path(self.dataset)
        return local if local.is_dir() else None

    def read_ids(self, shard: str) -> np.ndarray:
        if not self.streaming:
            return super().read_ids(shard)
        tables = [table for table in self._stream(shard, 4096, columns=["object_id"])]
        empty = pa.table({"object_id": pa.array([], pa.int64())})
        return ids_from_table(pa.concat_tables(tables) if tables else empty, shard)

    def read_coordinates(self, shard: str) -> tuple[np.ndarray, np.ndarray] | None:
        return None if self.streaming else super().read_coordinates(shard)  # streamed: one pass, for the ids

    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]:
        if self.streaming:
            raise DataError(
                "fetching objects by id needs random access; set data.streaming=false to cache the dataset",
                field=shard,
            )
        return super().read_rows(shard, rows)

    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]:
        if not self.streaming:
            yield from super().iter_rows(shard, batch_size)
            return
        for table in self._stream(shard, batch_size):
            yield table_to_rows(table)

    def _stream(self, shard: str, batch_size: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        stream = keep_encoded_rgb(self._load(shard))
        if columns:
            stream = stream.select_columns(columns)
        for batch in stream.with_format("arrow").iter(batch_size=batch_size):
            yield batch

    def _load(self, split: str):
        import datasets

        try:
            with hub_or_cache():  # no network: the cache at once, not retries per file
                return datasets.load_dataset(self.dataset, split=split, streaming=self.streaming)
        except (FileNotFoundError, ValueError, ConnectionError, OSError) as exc:
            raise ConfigError(
                f"cannot load Hugging Face dataset {self.dataset!r} split {split!r}: {exc}. Offline, the dataset "
                "must already be in the HF cache: fetch it with `fmb setup download` where the hub can be reached "
                "(or pass hf:<local dataset dir>)."
            ) from None


def _check_hub_id(dataset: str) -> None:
    """A name that is neither a local folder nor a hub id (a path typo, a pasted URL, a stray space)
    is said so, before `datasets` or the cache lookup fail on it."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(dataset)
    except HFValidationError:
        place = "a file, not a dataset folder" if Path(dataset).is_file() else "no such local folder"
        raise ConfigError(f"hf:{dataset}: {place}, and not a hub dataset id (owner/name, e.g. "
                          "hf:msiudek/astroPT_euclid_Q1_desi_dr1_dataset)") from None

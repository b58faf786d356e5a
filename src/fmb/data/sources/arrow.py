"""Rows from an Arrow cache: folders written by `datasets`' ``save_to_disk`` (what the original's
AstroCLIP fine-tuning reads with ``--use-arrow``).

A shard is every folder below the source directory that holds one saved `Dataset` (``state.json``
beside its ``data-*.arrow`` files), named by its path relative to the directory (``.`` for the
directory itself): a saved `DatasetDict` gives its splits (``train``, ``test``), the original's
``<cache>/msiudek__astroPT_euclid_Q1_desi_dr1_dataset__train`` folders give one shard each.
Each is opened with `datasets.load_from_disk`, which memory-maps the Arrow files and runs no code,
and served exactly as the Hugging Face source serves its cached splits (`DatasetSource`).

Selected by ``data.source: arrow:<dir>``, or by a plain directory that holds such folders and no
Parquet file.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from fmb.data.sources.base import DatasetSource
from fmb.errors import ConfigError, DataError

STATE_FILE = "state.json"  # written by save_to_disk beside a Dataset's Arrow files


def is_arrow_cache(directory: Path) -> bool:
    """A directory holding `save_to_disk` datasets and no Parquet file (which would make it a Parquet source)."""
    return (directory.is_dir() and next(directory.rglob("*.parquet"), None) is None
            and next(directory.rglob(STATE_FILE), None) is not None)


class ArrowSource(DatasetSource):
    def __init__(self, directory: Path):
        super().__init__()
        if not directory.is_dir():
            raise ConfigError(f"arrow source {directory} is not a directory (a datasets save_to_disk folder)")
        self.directory = directory
        self._shards = sorted(path.parent.relative_to(directory).as_posix() for path in directory.rglob(STATE_FILE))
        if not self._shards:
            raise ConfigError(f"arrow source {directory} holds no dataset saved by datasets' save_to_disk "
                              f"(no {STATE_FILE} below it)")
        self.description = f"Arrow cache {directory} ({len(self._shards)} datasets)"

    def shards(self) -> list[str]:
        return list(self._shards)

    def fingerprint(self) -> dict:
        """Per dataset, its state and info files (the dataset's own fingerprint and file list) and the
        sizes of its Arrow files: a new save_to_disk changes it, reading does not."""
        return {"kind": "arrow", "datasets": {shard: self._identity(shard) for shard in self._shards}}

    def _identity(self, shard: str) -> str:
        folder = self.directory / shard
        digest = hashlib.sha256()
        for path in [folder / STATE_FILE, folder / "dataset_info.json", *sorted(folder.glob("*.arrow"))]:
            digest.update(path.name.encode())
            digest.update(path.read_bytes() if path.suffix == ".json" and path.is_file() else
                          str(path.stat().st_size if path.is_file() else -1).encode())
        return digest.hexdigest()

    def _load(self, shard: str):
        import datasets

        try:
            data = datasets.load_from_disk(str(self.directory / shard))
        except (FileNotFoundError, ValueError, OSError, json.JSONDecodeError) as exc:
            raise DataError(f"cannot open the saved dataset: {_one_line(exc)}", field=shard) from None
        if not isinstance(data, datasets.Dataset):
            raise DataError("not one dataset (a DatasetDict: its splits are the shards)", field=shard)
        return data


def _one_line(exc: Exception) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__

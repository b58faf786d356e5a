"""A stable, seeded share of objects chosen by a hash of their ids: the same objects in every table
and every run with the seed, whatever the file order or sharding."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from fmb.io import row_groups


def in_id_hash_share(object_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the ~`fraction` of ids whose seeded splitmix64 hash falls in the share."""
    x = np.asarray(object_ids, dtype=np.uint64) ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    with np.errstate(over="ignore"):  # splitmix64 finaliser: overflow is the point
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(1_000_000)).astype(np.float64) < fraction * 1_000_000


def share_for(paths: list[Path], max_objects: int) -> float:
    """The share of ids to read so that the largest of these tables gives about `max_objects` (1: all)."""
    largest = max(pq.read_metadata(path).num_rows for path in paths)
    return min(1.0, max_objects / largest) if largest else 1.0


def read_id_share(path: Path, columns: list[str], share: float, seed: int) -> pd.DataFrame:
    """The rows of a Parquet table whose object_id falls in the share, read one row group at a time
    (all rows when `share` is 1)."""
    if share >= 1.0:
        return pq.read_table(path, columns=columns).to_pandas()
    kept = [group.filter(pa.array(in_id_hash_share(group.column("object_id").to_numpy(), share, seed)))
            for group in row_groups(path, columns)]
    return (pa.concat_tables(kept) if kept else pq.read_schema(path).empty_table().select(columns)).to_pandas()

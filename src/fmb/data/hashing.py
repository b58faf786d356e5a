"""A stable, seeded share of objects chosen by a hash of their ids: the same objects in every table
and every run with the seed, whatever the file order or sharding."""

from __future__ import annotations

import numpy as np


def in_id_hash_share(object_ids: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """True for the ~`fraction` of ids whose seeded splitmix64 hash falls in the share."""
    x = np.asarray(object_ids, dtype=np.uint64) ^ np.uint64(seed * 0x9E3779B97F4A7C15 % 2**64)
    with np.errstate(over="ignore"):  # splitmix64 finaliser: overflow is the point
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x = x ^ (x >> np.uint64(31))
    return (x % np.uint64(1_000_000)).astype(np.float64) < fraction * 1_000_000

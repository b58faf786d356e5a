"""Exact nearest neighbours in the fit sample, for the distance detectors (kNN, LOF).

faiss's flat (brute-force) index: the same neighbours as a tree search, found with matrix products,
which in 32-64 reduced dimensions is far faster than a ball tree (whose pruning fails in that many
dimensions) and holds only the fit sample. The fit sample is kept as a float32 tensor, saved as raw
bytes; the index is rebuilt from it when scoring (a copy, no training).

The search runs on one thread: faiss's OpenMP threads wait for each other at every block, and on
cores shared with other work that waiting dominates (measured on this 2-core machine at load ~7:
a 50,000 x 33,000 search in 64 dimensions took 7-10 s on one thread against 18-21 s on two).
"""

from __future__ import annotations

import numpy as np
import torch

QUERY_BATCH = 16384  # queries per search: bounds the distance block faiss holds


def fit_matrix(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32)))


def nearest(fit: torch.Tensor, queries: np.ndarray, k: int, skip_self: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(Euclidean distances, fit-row indices) of each query's k nearest fit rows, nearest first;
    `skip_self`: the queries are the fit rows themselves, each is not its own neighbour."""
    import faiss
    from threadpoolctl import threadpool_limits

    index = faiss.IndexFlatL2(fit.shape[1])
    index.add(fit.numpy())
    queries = np.ascontiguousarray(np.asarray(queries, dtype=np.float32))
    extra = int(skip_self)
    distances, indices = [], []
    for start in range(0, len(queries), QUERY_BATCH):
        with threadpool_limits(1):
            squared, found = index.search(queries[start:start + QUERY_BATCH], k + extra)
        if skip_self:
            squared, found = _drop_self(squared, found, np.arange(start, start + len(found)))
        distances.append(np.sqrt(np.maximum(squared, 0.0)))
        indices.append(found)
    return np.concatenate(distances).astype(np.float64), np.concatenate(indices)


def _drop_self(squared: np.ndarray, found: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row without its own index (or, for an exact duplicate listed first, without its last)."""
    keep = found != rows[:, None]
    keep[keep.all(axis=1), -1] = False
    k = found.shape[1] - 1
    return squared[keep].reshape(-1, k), found[keep].reshape(-1, k)

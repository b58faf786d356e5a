"""The k-nearest-neighbour graph the graph re-rankers learn on, and the numerics on it.

The graph joins two objects when either is among the other's k nearest in the first principal
components of the re-rankers' features; it is built once per feature matrix (`GraphCache`, saved in
the run's app directory). On it: the harmonic function of label propagation (`harmonic`, solved by
conjugate gradients: a refit costs tens of milliseconds at 10^4 objects), the greedy independent set
of the cold start (`one_per_neighbourhood`) and active search's batch (`pessimistic_order`).
"""

from __future__ import annotations

import hashlib
import json
import threading
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from fmb.errors import FmbError
from fmb.io import atomic_path

GRAPH_VERSION = 1  # part of a cached graph's key: bump it when the graph is built differently
SOLVER_TOLERANCE = 1e-10  # relative residual of label propagation's conjugate gradients
SOLVER_ITERATIONS = 2000


def principal_components(X: np.ndarray, components: int, seed: int) -> np.ndarray:
    """The first `components` principal components (embedding dimensions are commensurate: no scaling)."""
    from sklearn.decomposition import PCA

    count = min(components, *X.shape)
    return PCA(count, random_state=seed).fit_transform(X) if count < X.shape[1] else X - X.mean(axis=0)


def knn_graph(Z: np.ndarray, neighbours: int):
    """Symmetric 0/1 adjacency: i ~ j when either is among the other's `neighbours` nearest."""
    from sklearn.neighbors import NearestNeighbors

    count = min(neighbours + 1, len(Z))
    adjacency = NearestNeighbors(n_neighbors=count).fit(Z).kneighbors_graph(mode="connectivity")
    adjacency.setdiag(0)
    adjacency.eliminate_zeros()
    return adjacency.maximum(adjacency.T).tocsr()


def one_per_neighbourhood(scores: np.ndarray, graph, labelled: np.ndarray) -> np.ndarray:
    """`scores` raised so that a greedy independent set of the unlabelled objects comes first: best
    first, each object taken unless a neighbour was taken before it; then the others, in order."""
    taken = np.zeros(len(scores), bool)
    blocked = np.zeros(len(scores), bool)
    blocked[labelled] = True
    for node in np.argsort(-scores, kind="stable"):
        if not blocked[node]:
            taken[node] = True
            blocked[graph.indices[graph.indptr[node]:graph.indptr[node + 1]]] = True
            blocked[node] = True
    return scores + taken * (np.ptp(scores) + 1)


def pessimistic_order(numerator: np.ndarray, denominator: np.ndarray, graph, labelled: np.ndarray,
                      count: int) -> np.ndarray:
    """The first `count` unlabelled objects by chance (numerator / denominator), chosen one at a time
    as sequential simulation builds a batch (Jiang et al. 2018): the likeliest next, then assumed
    dull, so that each of its neighbours counts one more labelled neighbour and none interesting; a
    page is then not one question asked many times. Chances only fall as objects are chosen, and
    `count` choices lower at most count x (largest degree) others, so the first `count` come from the
    count x (largest degree + 1) + 1 unlabelled objects of highest chance (and those tied with the
    last): only those are queued, whatever the list's length."""
    import heapq

    current, denominator = numerator / denominator, denominator.astype(np.float64).copy()
    free = np.ones(len(current), bool)
    free[labelled] = False
    candidates = np.flatnonzero(free)
    needed = count * (int(np.diff(graph.indptr).max(initial=0)) + 1) + 1
    if len(candidates) > needed:  # the needed-th highest chance and every object tied with it
        lowest = -np.partition(-current[candidates], needed - 1)[needed - 1]
        candidates = candidates[current[candidates] >= lowest]
    queue = [(-current[node], int(node)) for node in candidates]
    heapq.heapify(queue)
    order: list[int] = []
    while queue and len(order) < count:
        negative, node = heapq.heappop(queue)
        if not free[node] or -negative != current[node]:  # taken, or an entry left from before an update
            continue
        free[node] = False
        order.append(node)
        for neighbour in graph.indices[graph.indptr[node]:graph.indptr[node + 1]]:
            if free[neighbour]:
                denominator[neighbour] += 1.0
                current[neighbour] = numerator[neighbour] / denominator[neighbour]
                heapq.heappush(queue, (-current[neighbour], int(neighbour)))
    return np.asarray(order, dtype=np.int64)


def harmonic(graph, labelled: np.ndarray, values: np.ndarray, prior_weight: float) -> np.ndarray:
    """The harmonic function on `graph` (Zhu, Ghahramani & Lafferty 2003): `values` at the labelled
    nodes, and each free node the weighted mean of its neighbours and of a dongle of weight
    `prior_weight` holding it to 0. Its system (degree + weight - adjacency, over the free nodes) is
    symmetric and strictly diagonally dominant, so conjugate gradients with the diagonal as
    preconditioner solve it in a few dozen sparse products; a direct factorisation fills in (seconds
    at 10^4 objects). Its vector products run on one BLAS thread: at this size threads only add their
    synchronisation, which on a busy machine cost twenty times the solve."""
    from scipy.sparse import diags
    from scipy.sparse.linalg import cg
    from threadpoolctl import threadpool_limits

    spread = np.zeros(graph.shape[0])
    spread[labelled] = values
    free = np.setdiff1d(np.arange(graph.shape[0]), labelled)
    if not len(free):
        return spread
    rows = graph[free]
    diagonal = np.asarray(rows.sum(axis=1)).ravel() + prior_weight
    system = (diags(diagonal) - rows[:, free]).tocsr()
    target = rows[:, labelled] @ spread[labelled]
    with threadpool_limits(limits=1, user_api="blas"):
        solution, failed = cg(system, target, rtol=SOLVER_TOLERANCE, atol=0.0, maxiter=SOLVER_ITERATIONS,
                              M=diags(1 / diagonal))
    if failed:
        raise FmbError(f"label propagation did not converge in {SOLVER_ITERATIONS} iterations")
    spread[free] = solution
    return spread


class GraphCache:
    """The k-nearest-neighbour graph of each feature matrix, built once: held in memory (the last
    `kept`) and, given `locate` (a graph's key -> its file, `fmb.layout.AppFiles.graph`), saved there
    atomically, so that a restarted app or the next `fmb rerank` reads it instead of building it. A
    graph's key is the sha256 of the matrix and of every parameter the graph depends on: a changed
    embedding or score table is another key, never a stale graph."""

    def __init__(self, locate: Callable[[str], Path] | None = None, kept: int = 4):
        self.locate, self.kept = locate, kept
        self._graphs: dict[str, object] = {}
        self._lock = threading.Lock()

    def graph(self, X: np.ndarray, components: int, neighbours: int, seed: int):
        key = content_key(X, GRAPH_VERSION, components, neighbours, seed)
        with self._lock:
            if key in self._graphs:
                return self._graphs[key]
            graph = self._read(key)
            if graph is None or graph.shape != (len(X), len(X)):
                graph = knn_graph(principal_components(X, components, seed), neighbours)
                self._write(key, graph)
            if self.kept:
                while len(self._graphs) >= self.kept:
                    self._graphs.pop(next(iter(self._graphs)))
                self._graphs[key] = graph
            return graph

    def _read(self, key: str):
        from scipy.sparse import load_npz

        path = self.locate(key) if self.locate else None
        if path is None or not path.is_file():
            return None
        try:
            return load_npz(path).tocsr()
        except (OSError, ValueError, KeyError, zipfile.BadZipFile):  # a damaged file: built and written again
            return None

    def _write(self, key: str, graph) -> None:
        from scipy.sparse import save_npz

        if self.locate is not None:
            with atomic_path(self.locate(key)) as temporary, open(temporary, "wb") as handle:
                save_npz(handle, graph)


def content_key(array: np.ndarray, *parameters) -> str:
    """A short sha256 of an array's shape, type and values and of `parameters`."""
    array = np.ascontiguousarray(array)
    digest = hashlib.sha256(json.dumps([list(array.shape), array.dtype.str, *parameters]).encode())
    digest.update(array.data)
    return digest.hexdigest()[:24]

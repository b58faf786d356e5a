"""What every re-ranker shares: the input checks and the plain order with no label (`Reranker`), and
the k-nearest-neighbour graph of the graph re-rankers (`GraphReranker`)."""

from __future__ import annotations

import numpy as np

from fmb.app.graph import GraphCache
from fmb.app.labels import MAX_INTEREST
from fmb.detect.scores import percentile
from fmb.errors import FmbError


class Reranker:
    """Base: checks the inputs; with no label the score is the anomaly percentile (the plain order).
    `summary` says in a line what a re-ranker does (shown beside its name in the app's menu)."""

    summary = ""

    def fit(self, X: np.ndarray, anomaly: np.ndarray, labelled_index: np.ndarray, interest: np.ndarray) -> "Reranker":
        X, anomaly, labelled_index, interest = _checked(X, anomaly, labelled_index, interest)
        prior = percentile(anomaly)
        self.scores_ = prior if len(labelled_index) == 0 else self._scores(X, anomaly, prior, labelled_index, interest)
        return self

    def _scores(self, X, anomaly, prior, labelled, interest) -> np.ndarray:
        raise NotImplementedError



class GraphReranker(Reranker):
    """Base of the re-rankers that learn on the k-nearest-neighbour graph of the first `components`
    principal components; `graphs` keeps the graph of each feature matrix (`GraphCache`), without one
    it is built on every fit."""

    def __init__(self, neighbours: int = 10, components: int = 16, seed: int = 0, graphs: GraphCache | None = None):
        self.neighbours, self.components, self.seed, self.graphs = neighbours, components, seed, graphs

    def _graph(self, X: np.ndarray):
        graphs = self.graphs if self.graphs is not None else GraphCache(kept=0)
        return graphs.graph(X, self.components, self.neighbours, self.seed)



def _checked(X, anomaly, labelled_index, interest):
    X = np.asarray(X, dtype=np.float64)
    anomaly = np.asarray(anomaly, dtype=np.float64)
    labelled_index = np.asarray(labelled_index, dtype=np.int64).reshape(-1)
    interest = np.asarray(interest, dtype=np.float64).reshape(-1)
    if X.ndim != 2 or anomaly.shape != (len(X),):
        raise FmbError(f"re-ranking needs one anomaly score per row of X, got {anomaly.shape} for X {X.shape}")
    if len(labelled_index) != len(interest) or len(np.unique(labelled_index)) != len(labelled_index):
        raise FmbError("re-ranking needs one interest per labelled object, each object once")
    if len(labelled_index) and (labelled_index.min() < 0 or labelled_index.max() >= len(X)):
        raise FmbError(f"a labelled index is outside X's {len(X)} rows")
    if not np.all((interest >= 0) & (interest <= MAX_INTEREST)):
        raise FmbError(f"interest must lie in 0..{MAX_INTEREST:g}")
    # an object without a finite anomaly score is unranked in the plain order: it goes last here
    finite = np.isfinite(anomaly)
    floor = anomaly[finite].min() - 1 if finite.any() else 0.0
    return X, np.where(finite, anomaly, floor), labelled_index, interest

"""k nearest neighbours: distance to the neighbours of the fit sample (PyOD's KNN scores, found by
brute force with faiss: see `_neighbours`)."""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import Field

from fmb.detect.base import Detector
from fmb.detect.methods._neighbours import fit_matrix, nearest

_REDUCE = {"mean": np.mean, "largest": lambda d, axis: d[:, -1], "median": np.median}


class KNNDetector(Detector):
    """k nearest neighbours: score = distance to the fit sample's nearest neighbours."""

    name = "knn"

    def __init__(
        self,
        *,
        n_neighbors: Annotated[int, Field(ge=1, description="neighbours whose distances make the score")] = 10,
        method: Annotated[Literal["mean", "largest", "median"], Field(
            description="distance to the k-th neighbour (largest), or the mean or median over the k")] = "mean",
        seed: int = 0,
    ):
        self.n_neighbors, self.method, self.seed = n_neighbors, method, seed

    def fit(self, x: np.ndarray) -> "KNNDetector":
        self.fit_x_ = fit_matrix(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        distances, _ = nearest(self.fit_x_, x, min(self.n_neighbors, len(self.fit_x_)))
        return _REDUCE[self.method](distances, axis=1)

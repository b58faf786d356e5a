"""k nearest neighbours: distance to the neighbours of the fit sample (PyOD's KNN scores, found by
brute force with faiss: see `_neighbours`)."""

from __future__ import annotations

import numpy as np

from fmb.detect.base import Detector
from fmb.detect.methods._neighbours import fit_matrix, nearest
from fmb.detect.sections import KNNSection

_REDUCE = {"mean": np.mean, "largest": lambda d, axis: d[:, -1], "median": np.median}


class KNNDetector(Detector):
    """k nearest neighbours: score = distance to the fit sample's nearest neighbours."""

    name = "knn"
    section = KNNSection

    def fit(self, x: np.ndarray) -> "KNNDetector":
        self.fit_x_ = fit_matrix(x)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        distances, _ = nearest(self.fit_x_, x, min(self.n_neighbors, len(self.fit_x_)))
        return _REDUCE[self.method](distances, axis=1)

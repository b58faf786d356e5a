"""Local Outlier Factor: density relative to that of an object's neighbours (scikit-learn's
novelty LOF, as PyOD wraps it, with the neighbours found by faiss: see `_neighbours`)."""

from __future__ import annotations

import numpy as np

from fmb.detect.base import Detector
from fmb.detect.methods._neighbours import fit_matrix, nearest
from fmb.detect.sections import LOFSection

_EPSILON = 1e-10  # scikit-learn's guard against duplicated points (infinite density)


class LOFDetector(Detector):
    """Local Outlier Factor: score = local density of the neighbours over the object's own."""

    name = "lof"
    section = LOFSection

    def fit(self, x: np.ndarray) -> "LOFDetector":
        self.fit_x_ = fit_matrix(x)
        self.k_ = max(1, min(self.n_neighbors, len(x) - 1))
        distances, indices = nearest(self.fit_x_, x, self.k_, skip_self=True)
        self.k_distance_ = distances[:, -1]
        self.lrd_ = self._reachability_density(distances, indices)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        distances, indices = nearest(self.fit_x_, x, self.k_)
        return self.lrd_[indices].mean(axis=1) / self._reachability_density(distances, indices)

    def _reachability_density(self, distances: np.ndarray, indices: np.ndarray) -> np.ndarray:
        reach = np.maximum(distances, self.k_distance_[indices])
        return 1.0 / (reach.mean(axis=1) + _EPSILON)

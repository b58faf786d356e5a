"""What a density on the first k PCA components cannot see: the part of an object off them.

`PCAResidual` fits the k-component PCA of an embedding (the same `Reducer` every detector's input
comes from) and scores an object by the squared norm of what the k components leave out, over the
fit sample's mean: an object off the low-rank manifold of ordinary objects scores high however
ordinary its projection looks. Cross-fitted like every detector, so the components never include
the object they judge. Models that know their inputs' noise give their own noise-weighted residual
instead (`fmb.models.base.residual_key`; the pixel reference's chi^2 per degree of freedom).
"""

from __future__ import annotations

import numpy as np

from fmb.detect.base import Detector
from fmb.detect.density import Reducer


class PCAResidual(Detector):
    name = "residual"

    def __init__(self, n_components: int = 64, seed: int = 0):
        self.n_components, self.seed = n_components, seed

    def fit(self, x: np.ndarray) -> "PCAResidual":
        self.reducer_ = Reducer(self.n_components, seed=self.seed).fit(x)
        self.scale_ = max(float(self._squared(x).mean()), 1e-12)
        return self

    def _squared(self, x: np.ndarray) -> np.ndarray:
        centred = np.asarray(x, dtype=np.float32) - self.reducer_.mean_
        kept = centred @ self.reducer_.components_.T
        return np.maximum((centred.astype(np.float64) ** 2).sum(1) - (kept.astype(np.float64) ** 2).sum(1), 0.0)

    def score(self, x: np.ndarray) -> np.ndarray:
        return self._squared(x) / self.scale_

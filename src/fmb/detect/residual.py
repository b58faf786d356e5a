"""What a density on the first k PCA components cannot see: the part of an object off them.

`PCAResidual` fits the k-component PCA of an embedding (the same `Reducer` every detector's input
comes from) and scores an object by the squared norm of what the k components leave out, over the
fit sample's mean: an object off the low-rank manifold of ordinary objects scores high however
ordinary its projection looks. Cross-fitted like every detector, so the components never include
the object they judge; the k copies are fitted from one pass over the fit sample (each fold's
`Moments`, pooled for each copy's k-1 folds). Models that know their inputs' noise give their own
noise-weighted residual instead (`fmb.models.base.residual_key`; the pixel reference's chi^2 per
degree of freedom).
"""

from __future__ import annotations

import numpy as np

from fmb.detect.base import FoldBatchedDetector
from fmb.detect.density import Moments, Reducer


class PCAResidual(FoldBatchedDetector):
    name = "residual"

    def __init__(self, n_components: int = 64, seed: int = 0):
        self.n_components, self.seed = n_components, seed

    def fit_folds(self, x: np.ndarray, train: np.ndarray) -> list["PCAResidual"]:
        """The f-th copy on the rows where `train[f]`: the rows are grouped by which copies train on
        them (for cross-fitting, by fold), each group's moments computed once and pooled per copy."""
        train = np.asarray(train, dtype=bool)
        patterns, group = np.unique(train.T, axis=0, return_inverse=True)
        moments = [Moments.of(x[group.ravel() == g]) for g in range(len(patterns))]
        fitted = []
        for fold in range(len(train)):
            included = [m for m, pattern in zip(moments, patterns) if pattern[fold]]
            pooled = sum(included[1:], included[0])
            detector = self._with_seed(self.seed + fold)
            detector.reducer_ = Reducer(self.n_components).fit_moments(pooled)
            # the fit rows' mean squared distance off the components: total variance less the kept part
            total = float(np.trace(pooled.scatter)) / pooled.n
            detector.scale_ = max(total - float(detector.reducer_.explained_variance_.sum()), 1e-12)
            fitted.append(detector)
        return fitted

    def _squared(self, x: np.ndarray) -> np.ndarray:
        centred = np.asarray(x, dtype=np.float32) - self.reducer_.mean_
        kept = centred @ self.reducer_.components_.T
        return np.maximum((centred.astype(np.float64) ** 2).sum(1) - (kept.astype(np.float64) ** 2).sum(1), 0.0)

    def score(self, x: np.ndarray) -> np.ndarray:
        return self._squared(x) / self.scale_

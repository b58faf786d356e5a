"""``astronomaly``: Astronomaly's neighbour score (Lochner & Bassett 2021): a random forest predicts
the interest u from the embedding, and the anomaly score a (scaled to 0-5) becomes
``a * tanh(exp(alpha * d0) - 1 + artanh(0.1 + 0.85 u / 5))``, d0 the distance to the nearest
labelled object over its mean: near labels a is scaled by the predicted interest, far from every
label it stays a. Parameters as the paper's code: 100 trees, alpha 1."""

from __future__ import annotations

import numpy as np

from fmb.app.labels import MAX_INTEREST
from fmb.app.rerankers.base import Reranker
class NeighbourScore(Reranker):
    """Astronomaly's neighbour score (see the module doc)."""

    summary = "Astronomaly's neighbour score: the anomaly score, scaled down near objects predicted dull"

    def __init__(self, alpha: float = 1.0, min_score: float = 0.1, trees: int = 100, seed: int = 0):
        self.alpha, self.min_score, self.trees, self.seed = alpha, min_score, trees, seed

    def _scores(self, X, anomaly, prior, labelled, interest):
        from scipy.spatial import cKDTree
        from sklearn.ensemble import RandomForestRegressor

        forest = RandomForestRegressor(n_estimators=self.trees, random_state=self.seed, n_jobs=1)
        predicted = forest.fit(X[labelled], interest).predict(X)
        distance = cKDTree(X[labelled]).query(X, k=1)[0]
        d0 = distance / distance.mean() if distance.mean() > 0 else distance
        f_u = self.min_score + 0.85 * predicted / MAX_INTEREST
        scaled = MAX_INTEREST * (anomaly - anomaly.min()) / max(np.ptp(anomaly), np.finfo(float).tiny)
        return scaled * np.tanh(np.exp(self.alpha * d0) - 1 + np.arctanh(f_u))

"""Classical baselines through PyOD, behind the same `Detector` interface as the flow.

Same inputs (the reduced, standardised embedding), same outputs (higher = more anomalous), same
cross-fitting. Isolation Forest, LOF, kNN (mean distance) and ECOD.
"""

from __future__ import annotations

import numpy as np

from fmb.detect.density import Detector


class PyODDetector(Detector):
    def __init__(self, name: str, seed: int = 0):
        self.name, self.seed = name, seed

    def _model(self):
        from pyod.models.ecod import ECOD
        from pyod.models.iforest import IForest
        from pyod.models.knn import KNN
        from pyod.models.lof import LOF

        return {
            "iforest": lambda: IForest(n_estimators=200, random_state=self.seed, n_jobs=1),
            "lof": lambda: LOF(n_neighbors=20),
            "knn": lambda: KNN(n_neighbors=10, method="mean"),
            "ecod": lambda: ECOD(),
        }[self.name]()

    def fit(self, x: np.ndarray) -> "PyODDetector":
        self.model = self._model().fit(np.asarray(x, dtype=np.float64))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model.decision_function(np.asarray(x, dtype=np.float64)), dtype=np.float64)


BASELINES = ("iforest", "lof", "knn", "ecod")

"""What the PyOD baselines share: float64 in, `decision_function` out (higher = more anomalous)."""

from __future__ import annotations

import numpy as np

from fmb.detect.base import Detector


class PyODBaseline(Detector):
    """A PyOD model behind the `Detector` interface; a subclass says which model (`_model`)."""

    def _model(self):
        raise NotImplementedError

    def fit(self, x: np.ndarray) -> "PyODBaseline":
        self.model_ = self._model().fit(np.asarray(x, dtype=np.float64))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return np.asarray(self.model_.decision_function(np.asarray(x, dtype=np.float64)), dtype=np.float64)

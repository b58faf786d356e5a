"""Isolation Forest (PyOD): objects isolated by few random axis-aligned splits are anomalous."""

from __future__ import annotations

from fmb.detect.methods._pyod import PyODBaseline
from fmb.detect.sections import IForestSection


class IForestDetector(PyODBaseline):
    """Isolation Forest (PyOD): score = how few random splits isolate an object."""

    name = "iforest"
    section = IForestSection

    def _model(self):
        from pyod.models.iforest import IForest

        return IForest(n_estimators=self.n_estimators, max_samples=self.max_samples, random_state=self.seed, n_jobs=1)

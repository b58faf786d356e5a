"""ECOD (PyOD): empirical-cumulative-distribution tail probabilities, one feature at a time."""

from __future__ import annotations

from fmb.detect.methods._pyod import PyODBaseline


class ECODDetector(PyODBaseline):
    """ECOD (PyOD): score = how far in the tails of each feature's empirical distribution (no parameters)."""

    name = "ecod"

    def __init__(self, *, seed: int = 0):
        self.seed = seed

    def _model(self):
        from pyod.models.ecod import ECOD

        return ECOD()

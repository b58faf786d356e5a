"""A detector defined outside fmb, registered at run time by tests/e2e/test_detector_registry.py."""

from __future__ import annotations

import numpy as np
from pydantic import Field

from fmb.config import Section
from fmb.detect.base import Detector


class ToySection(Section):
    """Distance from the mean of the fit sample, times `some_param`."""

    some_param: int = Field(1, ge=1, description="multiplies the distance")


class ToyDetector(Detector):
    """Distance from the mean of the fit sample, times `some_param`."""

    name = "toy"
    section = ToySection

    def fit(self, x: np.ndarray) -> "ToyDetector":
        self.mean_ = np.asarray(x, dtype=np.float64).mean(0)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.some_param * np.linalg.norm(np.asarray(x, dtype=np.float64) - self.mean_, axis=1)

"""A detector defined outside fmb, registered at run time by tests/e2e/test_detector_registry.py."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import Field

from fmb.detect.base import Detector


class ToyDetector(Detector):
    """Distance from the mean of the fit sample, times `some_param`."""

    name = "toy"

    def __init__(self, *, some_param: Annotated[int, Field(ge=1, description="multiplies the distance")] = 1,
                 seed: int = 0):
        self.some_param, self.seed = some_param, seed

    def fit(self, x: np.ndarray) -> "ToyDetector":
        self.mean_ = np.asarray(x, dtype=np.float64).mean(0)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        return self.some_param * np.linalg.norm(np.asarray(x, dtype=np.float64) - self.mean_, axis=1)

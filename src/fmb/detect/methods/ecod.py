"""ECOD (Li et al. 2022, as in PyOD): empirical-cumulative-distribution tail probabilities, one
feature at a time, against the fit sample.

fmb's own implementation, not PyOD's: PyOD's `decision_function` re-derives the distributions
from the training rows *and the batch being scored* (it keeps five n x d matrices to do so), so an
object's score depends on which other objects share its batch and the saved detector grows with
the fit sample. Here an object's tail probabilities are those of the fit sample with that one
object added, (count + 1) / (n + 1): exactly PyOD's value for a batch of one, the same whatever
else is scored alongside, and the fitted state is one sorted copy of the fit sample in float32
(a tensor, so that it is saved as raw bytes).
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import skew

from fmb.detect.base import Detector
from fmb.detect.sections import ECODSection


class ECODDetector(Detector):
    """ECOD: score = the summed negative log tail probabilities, each feature's tail chosen by its
    skewness (left, right or the more extreme), against the fit sample's empirical distributions."""

    name = "ecod"
    section = ECODSection

    def fit(self, x: np.ndarray) -> "ECODDetector":
        x = np.asarray(x, dtype=np.float32)
        self.sorted_ = torch.from_numpy(np.ascontiguousarray(np.sort(x, axis=0).T))  # feature x object
        self.skew_sign_ = np.sign(skew(x.astype(np.float64), axis=0))
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        queries = torch.from_numpy(np.ascontiguousarray(np.asarray(x, dtype=np.float32).T))
        n = self.sorted_.shape[1]
        at_most = torch.searchsorted(self.sorted_, queries, right=True).numpy().T
        at_least = n - torch.searchsorted(self.sorted_, queries).numpy().T
        left = -np.log((at_most + 1.0) / (n + 1.0))
        right = -np.log((at_least + 1.0) / (n + 1.0))
        # PyOD's skewness-corrected tail: left for negative skew, right for positive, their sum for 0
        by_skew = left * (self.skew_sign_ < 0) + right * (self.skew_sign_ > 0) + (left + right) * (self.skew_sign_ == 0)
        return np.maximum(np.maximum(left, right), by_skew).sum(axis=1)

"""Cross-modal misalignment that means the same thing for every model.

Image and spectrum embeddings of most models live in unrelated spaces (only AstroCLIP aligns them
by training), so their cosine says nothing. Instead a regressor learns to predict each modality's
reduced embedding from the other's; the misalignment of an object is how badly it is predicted:
the mean squared residual in units of the typical residual of each component, summed over both
directions. It runs inside `CrossFitted`, so an object is judged by a regressor that never saw it.
For AstroCLIP the plain cosine is also reported and compared with this learned score.
"""

from __future__ import annotations

import numpy as np
from sklearn.linear_model import RidgeCV

from fmb.detect.density import Detector

_ALPHAS = np.logspace(-3, 3, 13)


class PairResidual(Detector):
    """Features are [image | spectrum] side by side; `n_image` says where the image part ends."""

    name = "mismatch"

    def __init__(self, n_image: int, seed: int = 0):
        self.n_image, self.seed = n_image, seed

    def _split(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return x[:, : self.n_image], x[:, self.n_image :]

    def fit(self, x: np.ndarray) -> "PairResidual":
        image, spectrum = self._split(np.asarray(x, dtype=np.float64))
        self.to_spectrum = RidgeCV(alphas=_ALPHAS).fit(image, spectrum)
        self.to_image = RidgeCV(alphas=_ALPHAS).fit(spectrum, image)
        self.spectrum_scale = _residual_scale(self.to_spectrum.predict(image) - spectrum)
        self.image_scale = _residual_scale(self.to_image.predict(spectrum) - image)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        image, spectrum = self._split(np.asarray(x, dtype=np.float64))
        forward = ((self.to_spectrum.predict(image) - spectrum) / self.spectrum_scale) ** 2
        backward = ((self.to_image.predict(spectrum) - image) / self.image_scale) ** 2
        return forward.mean(1) + backward.mean(1)


def _residual_scale(residual: np.ndarray) -> np.ndarray:
    return np.maximum(residual.std(0), 1e-8)


def cosine_mismatch(image: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """1 - cosine similarity (higher = less aligned); meaningful only for aligned spaces (AstroCLIP)."""
    a = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    b = spectrum / np.maximum(np.linalg.norm(spectrum, axis=1, keepdims=True), 1e-12)
    return 1.0 - (a * b).sum(1)

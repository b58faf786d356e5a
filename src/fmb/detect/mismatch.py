"""Cross-modal misalignment that means the same thing for every model.

Image and spectrum embeddings of most models live in unrelated spaces (only AstroCLIP aligns them
by training), so their cosine says nothing. Two learned scores, both run inside `CrossFitted` so an
object is judged by a model that never saw it:

* `ContrastiveMismatch` (the ``mismatch`` column, used in fusion): two small networks map each
  modality's reduced embedding into a shared space and are trained contrastively (symmetric
  InfoNCE, learned temperature) to tell true pairs from the other pairings in a batch. Their
  critic then estimates the pointwise mutual information of an object's pair,
  log p(image, spectrum) / (p(image) p(spectrum)), against a reference sample of the fit objects;
  the score is minus that, summed over both directions. An image and spectrum that do not belong
  together, in whatever way the data show it, score high; nothing about the kind of mismatch is
  built in.
* `PairResidual` (``mismatch_residual``): ridge regression of each modality's embedding from the
  other's, scored by the standardised squared residual. Cheap and linear; it only sees mismatches
  that move the conditional mean, which on our synthetic survey is close to nothing, so it is
  reported for comparison rather than fused.

For AstroCLIP the plain cosine is also reported and compared with the learned score.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeCV

from fmb.detect.density import Detector

_ALPHAS = np.logspace(-3, 3, 13)
_PMI_BATCH = 8192  # objects per scoring chunk: the chunk x references logits stay ~130 MB


@dataclass
class ContrastSettings:
    hidden: int = 128  # width of each tower's two hidden layers
    dim: int = 64  # shared space
    epochs: int = 40  # passes over the fit data, counted in steps within [min_steps, max_steps]
    min_steps: int = 300
    max_steps: int = 3000
    batch_size: int = 256
    lr: float = 1e-3
    references: int = 4096  # fit objects kept to estimate the marginals when scoring


def _tower(features: int, hidden: int, dim: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.GELU(), torch.nn.Linear(hidden, dim))


class ContrastiveMismatch(Detector):
    """Features are [image | spectrum] side by side; `n_image` says where the image part ends."""

    name = "mismatch"

    def __init__(self, n_image: int, settings: ContrastSettings | None = None, seed: int = 0):
        self.n_image, self.settings, self.seed = n_image, settings or ContrastSettings(), seed

    def fit(self, x: np.ndarray) -> "ContrastiveMismatch":
        s = self.settings
        image, spectrum = _split_tensors(x, self.n_image)
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.image_tower = _tower(image.shape[1], s.hidden, s.dim)
            self.spectrum_tower = _tower(spectrum.shape[1], s.hidden, s.dim)
        self.log_temperature = torch.nn.Parameter(torch.tensor(float(np.log(10.0))))
        parameters = [*self.image_tower.parameters(), *self.spectrum_tower.parameters(), self.log_temperature]
        optimizer = torch.optim.AdamW(parameters, lr=s.lr, weight_decay=1e-4)
        batch = min(s.batch_size, len(image))
        steps = int(np.clip(s.epochs * max(1, len(image) // batch), s.min_steps, s.max_steps))
        targets = torch.arange(batch)
        for _ in range(steps):
            chosen = torch.randperm(len(image), generator=generator)[:batch]
            logits = self._logits(image[chosen], spectrum[chosen])
            loss = (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        keep = torch.randperm(len(image), generator=generator)[: s.references]
        with torch.no_grad():
            self.reference_image = self._embed(self.image_tower, image[keep])
            self.reference_spectrum = self._embed(self.spectrum_tower, spectrum[keep])
        return self

    @staticmethod
    def _embed(tower: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(tower(x), dim=1)

    def _logits(self, image: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        return self._embed(self.image_tower, image) @ self._embed(self.spectrum_tower, spectrum).T * self.log_temperature.exp()

    @torch.no_grad()
    def score(self, x: np.ndarray) -> np.ndarray:
        image, spectrum = _split_tensors(x, self.n_image)
        return torch.cat([self._minus_pmi(i, s) for i, s in zip(image.split(_PMI_BATCH), spectrum.split(_PMI_BATCH))]
                         ).numpy().astype(np.float64)

    def _minus_pmi(self, image: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        """-(2 c(i, s) - log mean_r exp c(i, s_r) - log mean_r exp c(i_r, s)), c the critic."""
        temperature = self.log_temperature.exp()
        z_image, z_spectrum = self._embed(self.image_tower, image), self._embed(self.spectrum_tower, spectrum)
        paired = (z_image * z_spectrum).sum(1) * temperature
        log_n = np.log(len(self.reference_image))
        marginal_spectrum = torch.logsumexp(z_image @ self.reference_spectrum.T * temperature, 1) - log_n
        marginal_image = torch.logsumexp(z_spectrum @ self.reference_image.T * temperature, 1) - log_n
        return marginal_spectrum + marginal_image - 2 * paired


def _split_tensors(x: np.ndarray, n_image: int) -> tuple[torch.Tensor, torch.Tensor]:
    data = torch.from_numpy(np.asarray(x, dtype=np.float32))
    return data[:, :n_image], data[:, n_image:]


class PairResidual(Detector):
    """Features are [image | spectrum] side by side; `n_image` says where the image part ends."""

    name = "mismatch_residual"

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

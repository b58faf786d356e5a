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

from typing import Annotated

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from sklearn.linear_model import RidgeCV

from fmb.detect.base import Detector, seeded, split_held_out, step_budget, train_with_held_out

_ALPHAS = np.logspace(-3, 3, 13)
_PMI_BATCH = 8192  # objects per scoring chunk: the chunk x references logits stay ~130 MB


def _tower(features: int, hidden: int, dim: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.GELU(), torch.nn.Linear(hidden, dim))


class _Critic(torch.nn.Module):
    """c(image, spectrum) = T <f(image), g(spectrum)>, f and g mapping onto one unit sphere."""

    def __init__(self, n_image: int, n_spectrum: int, hidden: int, dim: int):
        super().__init__()
        self.image = _tower(n_image, hidden, dim)
        self.spectrum = _tower(n_spectrum, hidden, dim)
        self.log_temperature = torch.nn.Parameter(torch.tensor(float(np.log(10.0))))

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=1)

    def embed_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.spectrum(x), dim=1)

    def loss(self, image: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: each true pair against the other pairings of its batch."""
        logits = self.embed_image(image) @ self.embed_spectrum(spectrum).T * self.log_temperature.exp()
        targets = torch.arange(len(logits))
        return (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets)) / 2


class ContrastiveMismatch(Detector):
    """The contrastive image-spectrum critic behind the `mismatch` score.

    Features are [image | spectrum] side by side; `n_image` says where the image part ends.

    Training stops when the contrastive loss of a held-out 10 % of the fit pairs stops improving,
    and keeps the best state: the critic otherwise learns the training pairs by heart, and its
    held-out loss (no labels involved) is what says when.
    """

    name = "mismatch"

    def __init__(
        self,
        n_image: int,
        *,
        hidden: Annotated[int, Field(ge=8, description="hidden units of each modality's tower")] = 128,
        dim: Annotated[int, Field(ge=2, description="dimension of the shared space")] = 64,
        epochs: Annotated[int, Field(ge=1, description="passes over the fit data, counted in steps within "
                                     "[min_steps, max_steps]")] = 40,
        min_steps: Annotated[int, Field(ge=1, description="optimiser steps at least")] = 300,
        max_steps: Annotated[int, Field(ge=1, description="optimiser steps at most")] = 3000,
        batch_size: Annotated[int, Field(ge=8, description="pairs per step: each is contrasted with the others in "
                                         "its batch")] = 256,
        lr: Annotated[float, Field(gt=0, description="learning rate (AdamW)")] = 1e-3,
        references: Annotated[int, Field(ge=16, description="fit objects kept to estimate the marginals when "
                                         "scoring")] = 4096,
        check_every: Annotated[int, Field(ge=1, description="steps between checks of the held-out (10 %) "
                                          "contrastive loss")] = 50,
        patience: Annotated[int, Field(ge=1, description="checks without improvement before training stops (best "
                                       "state kept)")] = 5,
        seed: int = 0,
    ):
        self.n_image, self.hidden, self.dim, self.epochs, self.lr = n_image, hidden, dim, epochs, lr
        self.min_steps, self.max_steps, self.batch_size, self.references = min_steps, max_steps, batch_size, references
        self.check_every, self.patience, self.seed = check_every, patience, seed

    def fit(self, x: np.ndarray) -> "ContrastiveMismatch":
        image, spectrum = _split_tensors(x, self.n_image)
        generator = torch.Generator().manual_seed(self.seed)
        self.critic_ = seeded(self.seed, lambda: _Critic(image.shape[1], spectrum.shape[1], self.hidden, self.dim))
        optimizer = torch.optim.AdamW(self.critic_.parameters(), lr=self.lr, weight_decay=1e-4)
        held, train = split_held_out(torch.arange(len(image)), generator)
        batch = min(self.batch_size, len(train))
        steps = step_budget(self.epochs, len(train), batch, self.min_steps, self.max_steps)

        def train_step() -> None:
            chosen = train[torch.randperm(len(train), generator=generator)[:batch]]
            loss = self.critic_.loss(image[chosen], spectrum[chosen])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        self.steps_trained_ = train_with_held_out(self.critic_, train_step,
                                                  lambda: self._held_out_loss(image[held], spectrum[held], batch),
                                                  steps, self.check_every, self.patience)
        keep = torch.randperm(len(image), generator=generator)[: self.references]
        with torch.no_grad():
            self.reference_image_ = self.critic_.embed_image(image[keep])
            self.reference_spectrum_ = self.critic_.embed_spectrum(spectrum[keep])
        return self

    @torch.no_grad()
    def _held_out_loss(self, image: torch.Tensor, spectrum: torch.Tensor, batch: int) -> float:
        """Mean loss over held-out batches of the training batch size (InfoNCE depends on it)."""
        return float(np.mean([self.critic_.loss(i, s) for i, s in zip(image.split(batch), spectrum.split(batch))]))

    @torch.no_grad()
    def score(self, x: np.ndarray) -> np.ndarray:
        image, spectrum = _split_tensors(x, self.n_image)
        return torch.cat([self._minus_pmi(i, s) for i, s in zip(image.split(_PMI_BATCH), spectrum.split(_PMI_BATCH))]
                         ).numpy().astype(np.float64)

    def _minus_pmi(self, image: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        """-(2 c(i, s) - log mean_r exp c(i, s_r) - log mean_r exp c(i_r, s)), c the critic."""
        temperature = self.critic_.log_temperature.exp()
        z_image, z_spectrum = self.critic_.embed_image(image), self.critic_.embed_spectrum(spectrum)
        paired = (z_image * z_spectrum).sum(1) * temperature
        log_n = np.log(len(self.reference_image_))
        marginal_spectrum = torch.logsumexp(z_image @ self.reference_spectrum_.T * temperature, 1) - log_n
        marginal_image = torch.logsumexp(z_spectrum @ self.reference_image_.T * temperature, 1) - log_n
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
        self.to_spectrum_ = RidgeCV(alphas=_ALPHAS).fit(image, spectrum)
        self.to_image_ = RidgeCV(alphas=_ALPHAS).fit(spectrum, image)
        self.spectrum_scale_ = _residual_scale(self.to_spectrum_.predict(image) - spectrum)
        self.image_scale_ = _residual_scale(self.to_image_.predict(spectrum) - image)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        image, spectrum = self._split(np.asarray(x, dtype=np.float64))
        forward = ((self.to_spectrum_.predict(image) - spectrum) / self.spectrum_scale_) ** 2
        backward = ((self.to_image_.predict(spectrum) - image) / self.image_scale_) ** 2
        return forward.mean(1) + backward.mean(1)


def _residual_scale(residual: np.ndarray) -> np.ndarray:
    return np.maximum(residual.std(0), 1e-8)


def cosine_mismatch(image: np.ndarray, spectrum: np.ndarray) -> np.ndarray:
    """1 - cosine similarity (higher = less aligned); meaningful only for aligned spaces (AstroCLIP)."""
    a = image / np.maximum(np.linalg.norm(image, axis=1, keepdims=True), 1e-12)
    b = spectrum / np.maximum(np.linalg.norm(spectrum, axis=1, keepdims=True), 1e-12)
    return 1.0 - (a * b).sum(1)

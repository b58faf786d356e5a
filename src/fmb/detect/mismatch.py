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

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.linear_model import RidgeCV

from fmb.detect.base import (Detector, FoldBatchedDetector, FoldBatches, one_thread, seeded, stack_folds, step_budget,
                             train_with_held_out, training_device, unstack_folds)
from fmb.detect.sections import MismatchSection

_ALPHAS = np.logspace(-3, 3, 13)
_PMI_BATCH = 8192  # objects per scoring chunk: the chunk x references logits stay ~130 MB


def _tower(features: int, hidden: int, dim: int) -> torch.nn.Module:
    return torch.nn.Sequential(torch.nn.Linear(features, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, hidden),
                               torch.nn.GELU(), torch.nn.Linear(hidden, dim))


class _Critic(torch.nn.Module):
    """c(image, spectrum) = T <f(image), g(spectrum)>, f and g mapping onto one unit sphere.

    Shape-agnostic in the leading dimensions, so that `fmb.detect.base.stack_folds` of k critics
    computes all k on (k, batch, features) inputs."""

    def __init__(self, n_image: int, n_spectrum: int, hidden: int, dim: int):
        super().__init__()
        self.image = _tower(n_image, hidden, dim)
        self.spectrum = _tower(n_spectrum, hidden, dim)
        self.log_temperature = torch.nn.Parameter(torch.tensor(float(np.log(10.0))))

    def embed_image(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.image(x), dim=-1)

    def embed_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.spectrum(x), dim=-1)

    def loss(self, image: torch.Tensor, spectrum: torch.Tensor) -> torch.Tensor:
        """Symmetric InfoNCE: each true pair against the other pairings of its batch (one loss per
        leading index: per fold of a stacked critic)."""
        temperature = self.log_temperature.exp()[..., None, None]
        logits = self.embed_image(image) @ self.embed_spectrum(spectrum).transpose(-1, -2) * temperature
        return (_pair_cross_entropy(logits) + _pair_cross_entropy(logits.transpose(-1, -2))) / 2


def _pair_cross_entropy(logits: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of each row's true pair (the diagonal) against its row: F.cross_entropy
    with targets arange(batch), for any leading dimensions."""
    return (torch.logsumexp(logits, -1) - logits.diagonal(dim1=-2, dim2=-1)).mean(-1)


class ContrastiveMismatch(FoldBatchedDetector):
    """The contrastive image-spectrum critic behind the `mismatch` score.

    Features are [image | spectrum] side by side; `n_image` says where the image part ends.

    Training stops when the contrastive loss of a held-out 10 % of the fit pairs stops improving,
    and keeps the best state: the critic otherwise learns the training pairs by heart, and its
    held-out loss (no labels involved) is what says when. Cross-fitted, the k folds' critics train
    as one stacked critic, each fold's batches drawn from its own training pairs.
    """

    name = "mismatch"
    section = MismatchSection

    def __init__(self, n_image: int, *, seed: int = 0, **hyper_parameters):
        super().__init__(seed=seed, **hyper_parameters)
        self.n_image = n_image

    def fit_folds(self, x: np.ndarray, train: np.ndarray) -> list["ContrastiveMismatch"]:
        image, spectrum = _split_tensors(x, self.n_image)
        critics = [seeded(self.seed + fold, lambda: _Critic(image.shape[1], spectrum.shape[1], self.hidden, self.dim))
                   for fold in range(len(train))]
        generator = torch.Generator().manual_seed(self.seed)
        batches = FoldBatches(train, generator)
        batch = min(self.batch_size, batches.n_train)
        steps = step_budget(self.epochs, batches.n_train, batch, self.min_steps, self.max_steps)
        device = training_device()
        image_on, spectrum_on = image.to(device), spectrum.to(device)
        with one_thread():
            model = stack_folds(critics).to(device)
            optimizer = torch.optim.AdamW(model.parameters(), lr=self.lr, weight_decay=1e-4)

            def train_step() -> None:
                chosen = batches.next(batch).to(device)
                loss = model.loss(image_on[chosen], spectrum_on[chosen]).sum()  # the folds' losses add up
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()

            held = batches.held.to(device)

            @torch.no_grad()
            def held_out_loss() -> np.ndarray:
                """Each fold's mean loss over held-out batches of the training batch size (InfoNCE
                depends on it)."""
                losses = [model.loss(image_on[chosen], spectrum_on[chosen]) for chosen in held.split(batch, dim=1)]
                return torch.stack(losses).mean(0).cpu().numpy()

            trained = train_with_held_out(model, train_step, held_out_loss, steps, self.check_every, self.patience,
                                          len(train))
            unstack_folds(model, critics)
        fitted = []
        for fold, critic in enumerate(critics):
            detector = self._with_seed(self.seed + fold)
            detector.critic_, detector.steps_trained_ = critic, int(trained[fold])
            objects = torch.from_numpy(np.flatnonzero(train[fold]))
            keep = objects[torch.randperm(len(objects), generator=generator)[: self.references]]
            with torch.no_grad():
                detector.reference_image_ = critic.embed_image(image[keep])
                detector.reference_spectrum_ = critic.embed_spectrum(spectrum[keep])
            fitted.append(detector)
        return fitted

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

"""Anomaly scores from one embedding matrix: a reducer, cross-fitting, and detectors behind one interface.

* `Reducer`: PCA to `n_components` then one global standardisation, fitted on a sample.
* Every detector (the normalizing flow here, the PyOD baselines in `baselines.py`) is wrapped by
  `CrossFitted`: the fit sample is split in k folds by a hash of the object id and k detectors are
  fitted, each on k-1 folds. An object of the fit sample is scored by the detector that never saw
  it, so a rare object cannot be memorised into looking normal; an object outside the sample
  (everything beyond `max_fit`, or new objects later) is scored by one of the k detectors chosen by
  its id. Fitting is on a sample, scoring streams in batches, memory stays bounded.
* Scores: higher = more anomalous. For the flow the score is the negative log-likelihood.

Everything is persisted with `save`/`load` so new objects are scored later without refitting.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from fmb.data.loader import is_validation
from fmb.errors import FmbError
from fmb.io import write_torch

SCORE_BATCH = 65536


def fold_of(object_ids: np.ndarray, n_folds: int, seed: int) -> np.ndarray:
    """A stable fold number in [0, n_folds) per id (same hash as the train/validation split)."""
    folds = np.zeros(len(object_ids), dtype=np.int64)
    remaining = np.ones(len(object_ids), dtype=bool)
    for fold in range(n_folds - 1):  # peel off 1/(k - fold) of what remains, with a fold-specific seed
        take = remaining & is_validation(object_ids, 1.0 / (n_folds - fold), seed + 7919 * (fold + 1))
        folds[take] = fold
        remaining &= ~take
    folds[remaining] = n_folds - 1
    return folds


class Reducer:
    """PCA (fitted on a sample), then one global scale so the average component has unit variance.

    A single scale, not one per component: whitening each component would shrink the directions
    in which groups of objects differ most and make an object between two groups look ordinary
    to every distance-based detector.
    """

    def __init__(self, n_components: int = 64, seed: int = 0):
        self.n_components, self.seed = n_components, seed

    def fit(self, x: np.ndarray) -> "Reducer":
        x = np.asarray(x, dtype=np.float64)
        self.mean_ = x.mean(0)
        k = min(self.n_components, x.shape[1], len(x) - 1)
        with torch.random.fork_rng():  # randomized SVD, reproducible
            torch.manual_seed(self.seed)
            _, _, v = torch.pca_lowrank(torch.from_numpy(x - self.mean_), q=k, center=False, niter=4)
        self.components_ = v[:, :k].numpy().T.astype(np.float32)
        projected = (x - self.mean_) @ self.components_.T
        self.scale_ = np.float32(max(np.sqrt(projected.var(0).mean()), 1e-8))
        self.mean_ = self.mean_.astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean_) @ self.components_.T) / self.scale_


class Detector(ABC):
    """One anomaly detector on reduced features: `fit(x)`, then `score(x)` (higher = more anomalous)."""

    name: str

    @abstractmethod
    def fit(self, x: np.ndarray) -> "Detector": ...

    @abstractmethod
    def score(self, x: np.ndarray) -> np.ndarray: ...


@dataclass
class FlowSettings:
    transforms: int = 5
    hidden: int = 128
    epochs: int = 30
    batch_size: int = 512
    lr: float = 1e-3
    patience: int = 4  # held-out checks (every `check_every` steps) without improvement
    min_steps: int = 800  # small samples still get a trained flow, not a few epochs of steps
    max_steps: int = 2000
    check_every: int = 100


class HeldOutBest:
    """Early stopping on a held-out loss: keeps the best state seen, says when to stop.

    Shared by every detector trained by gradient steps, so each keeps the state that generalises
    best rather than the last one, which for small fit samples is memorised.
    """

    def __init__(self, patience: int, tolerance: float = 1e-3):
        self.patience, self.tolerance = patience, tolerance
        self.best, self.state, self.stale = np.inf, None, 0

    def check(self, held_loss: float, module: torch.nn.Module) -> bool:
        """Record one held-out loss of `module`; True when `patience` checks in a row brought nothing."""
        if held_loss < self.best - self.tolerance:
            self.best, self.stale = held_loss, 0
            self.state = {k: v.detach().clone() for k, v in module.state_dict().items()}
        else:
            self.stale += 1
        return self.stale >= self.patience

    def restore(self, module: torch.nn.Module) -> None:
        if self.state is None:  # every held-out loss was NaN or infinite
            raise FmbError(f"{type(module).__name__} training diverged: its held-out loss was never finite "
                           "(check the embeddings for extreme values, or lower the learning rate)")
        module.load_state_dict(self.state)


def split_held_out(data: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(held-out 10 %, the rest), drawn at random."""
    order = torch.randperm(len(data), generator=generator)
    n_hold = max(1, len(data) // 10)
    return data[order[:n_hold]], data[order[n_hold:]]


class FlowDetector(Detector):
    """A masked autoregressive flow (zuko) trained by maximum likelihood; score = NLL.

    Training is counted in optimiser steps (`epochs` worth, within [min_steps, max_steps]), with
    a 10 % held-out part of the fit data checked every `check_every` steps; the best state is kept.
    """

    name = "flow"

    def __init__(self, settings: FlowSettings | None = None, seed: int = 0):
        self.settings, self.seed = settings or FlowSettings(), seed

    def fit(self, x: np.ndarray) -> "FlowDetector":
        import zuko

        s = self.settings
        generator = torch.Generator().manual_seed(self.seed)
        with torch.random.fork_rng():
            torch.manual_seed(self.seed)
            self.flow = zuko.flows.MAF(features=x.shape[1], transforms=s.transforms, hidden_features=(s.hidden, s.hidden))
        held, train = split_held_out(torch.from_numpy(np.asarray(x, dtype=np.float32)), generator)
        steps = int(np.clip(s.epochs * max(1, len(train) // s.batch_size), s.min_steps, s.max_steps))
        optimizer = torch.optim.Adam(self.flow.parameters(), lr=s.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)
        tracker = HeldOutBest(s.patience)
        for step in range(1, steps + 1):
            batch = train[torch.randint(0, len(train), (min(s.batch_size, len(train)),), generator=generator)]
            loss = -self.flow().log_prob(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.flow.parameters(), 5.0)
            optimizer.step()
            schedule.step()
            if step % s.check_every and step != steps:
                continue
            if tracker.check(float(self._nll(held).mean()), self.flow):
                break
        tracker.restore(self.flow)
        return self

    @torch.no_grad()
    def _nll(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.flow().log_prob(chunk) for chunk in x.split(SCORE_BATCH)])

    def score(self, x: np.ndarray) -> np.ndarray:
        return self._nll(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy().astype(np.float64)


@dataclass
class CrossFitted:
    """k copies of a detector, each fitted without one fold of the fit sample (see module doc)."""

    make: object  # callable(seed) -> Detector
    n_folds: int = 5
    seed: int = 0
    detectors: list = field(default_factory=list)
    fit_ids: np.ndarray | None = None
    fit_folds: np.ndarray | None = None

    def fit(self, x: np.ndarray, object_ids: np.ndarray) -> "CrossFitted":
        self.fit_ids = np.asarray(object_ids, dtype=np.int64)
        self.fit_folds = fold_of(self.fit_ids, self.n_folds, self.seed)
        self.detectors = [self.make(self.seed + fold).fit(x[self.fit_folds != fold]) for fold in range(self.n_folds)]
        return self

    def folds_for(self, object_ids: np.ndarray) -> np.ndarray:
        """The fold whose detector scores each id: its own fold if in the fit sample, else by hash."""
        object_ids = np.asarray(object_ids, dtype=np.int64)
        folds = fold_of(object_ids, self.n_folds, self.seed + 1)  # outsiders: any detector is unbiased
        order = np.argsort(self.fit_ids)
        position = np.searchsorted(self.fit_ids, object_ids, sorter=order)
        position = np.clip(position, 0, len(order) - 1)
        inside = self.fit_ids[order[position]] == object_ids
        folds[inside] = self.fit_folds[order[position[inside]]]
        return folds

    def score(self, x: np.ndarray, object_ids: np.ndarray) -> np.ndarray:
        folds = self.folds_for(object_ids)
        scores = np.empty(len(x), dtype=np.float64)
        for fold, detector in enumerate(self.detectors):
            chosen = folds == fold
            if chosen.any():
                scores[chosen] = detector.score(x[chosen])
        return scores


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(score - median) / (1.4826 MAD): how many robust sigmas above the typical object."""
    median = np.median(scores)
    mad = 1.4826 * np.median(np.abs(scores - median))
    return (scores - median) / max(mad, 1e-12)


def percentile(scores: np.ndarray) -> np.ndarray:
    """p = (N - rank + 1) / N with rank 1 = highest score: 1 for the most anomalous object."""
    ranks = rank_descending(scores)
    return (len(scores) - ranks + 1) / len(scores)


def rank_descending(scores: np.ndarray) -> np.ndarray:
    """1 = highest score; ties share the best rank ("min" ranking)."""
    from scipy.stats import rankdata

    return rankdata(-np.asarray(scores), method="min").astype(np.int64)


save = write_torch  # detectors are saved like any other torch object


def load(path: Path):
    return torch.load(path, map_location="cpu", weights_only=False)

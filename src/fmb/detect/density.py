"""Anomaly scores from one embedding matrix: the reducer, cross-fitting, and persistence.

* `Reducer`: PCA to `n_components` then one global standardisation, fitted on a sample.
* Every detector (`fmb.detect.base.Detector`: the normalizing flow and the PyOD baselines in
  `fmb.detect.methods`, the misalignment critics in `fmb.detect.mismatch`) is wrapped by
  `CrossFitted`: the fit sample is split in k folds by a hash of the object id and k detectors are
  fitted, each on k-1 folds. An object of the fit sample is scored by the detector that never saw
  it, so a rare object cannot be memorised into looking normal; an object outside the sample
  (everything beyond `max_fit`, or new objects later) is scored by one of the k detectors chosen by
  its id. Fitting is on a sample, scoring streams in batches, memory stays bounded. Detectors
  trained by gradient steps (`fmb.detect.base.FoldBatchedDetector`) fit their k copies as one
  batched model, one optimiser step for all folds, each fold on its own objects.
* Scores: higher = more anomalous. For the flow the score is the negative log-likelihood.

Everything is persisted with `save`/`load` so new objects are scored later without refitting.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from fmb.data.loader import is_validation
from fmb.detect.base import FoldBatchedDetector
from fmb.io import read_torch, write_torch


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


_MOMENT_ROWS = 16384  # rows per chunk of the scatter matrix: bounds its float64 copy (~100 MB at 768-d)
#: BLAS threads of the PCA's products and eigenproblem. One: on cores shared with other work, threads
#: that wait for each other at every block cost more than they share (measured on this 2-core machine
#: at load ~14: the 768 x 768 eigenproblem 0.12 s on one thread against 0.77 s on two, the scatter
#: of 10,000 x 768 rows 0.59 s against 0.88 s)
PCA_THREADS = 1


@dataclass
class Moments:
    """The row count, mean and centred scatter matrix (float64) of a set of rows: what a PCA needs.

    Pooled exactly by ``+`` (Chan et al.'s parallel update), so the moments of a union of row sets
    come from those of its parts in O(d^2): the k cross-fitting copies of a PCA (each on k-1 of the
    k folds) share one pass over the data, and a pass holds one chunk's float64 copy at a time.
    The products run on one BLAS thread (`PCA_THREADS`).
    """

    n: int
    mean: np.ndarray
    scatter: np.ndarray

    @classmethod
    def of(cls, x: np.ndarray) -> "Moments":
        from threadpoolctl import threadpool_limits

        with threadpool_limits(PCA_THREADS):
            chunks = [cls._of_chunk(x[start:start + _MOMENT_ROWS]) for start in range(0, len(x), _MOMENT_ROWS)]
        return sum(chunks[1:], chunks[0])

    @classmethod
    def _of_chunk(cls, x: np.ndarray) -> "Moments":
        x = np.asarray(x, dtype=np.float64)
        mean = x.mean(0)
        centred = x - mean
        return cls(len(x), mean, centred.T @ centred)

    def __add__(self, other: "Moments") -> "Moments":
        n = self.n + other.n
        delta = other.mean - self.mean
        return Moments(n, self.mean + delta * (other.n / n),
                       self.scatter + other.scatter + np.outer(delta, delta) * (self.n * other.n / n))


class Reducer:
    """PCA (fitted on a sample), then one global scale so the average component has unit variance.

    A single scale, not one per component: whitening each component would shrink the directions
    in which groups of objects differ most and make an object between two groups look ordinary
    to every distance-based detector.

    The components are the exact leading eigenvectors of the sample's covariance (`Moments`, in
    float64), each signed so that its largest entry is positive (a fixed choice, the same on every
    machine). One pass over the rows and a d x d eigenproblem: for the embeddings' widths (a few
    hundred to a few thousand) cheaper than a randomized SVD of the n x d matrix, and exact.
    """

    def __init__(self, n_components: int = 64):
        self.n_components = n_components

    def fit(self, x: np.ndarray) -> "Reducer":
        return self.fit_moments(Moments.of(x))

    def fit_moments(self, moments: Moments) -> "Reducer":
        from scipy.linalg import eigh
        from threadpoolctl import threadpool_limits

        d = len(moments.mean)
        k = min(self.n_components, d, moments.n - 1)
        with threadpool_limits(PCA_THREADS):
            values, vectors = eigh(moments.scatter, subset_by_index=[d - k, d - 1])  # ascending
        values, vectors = values[::-1], vectors[:, ::-1]
        signs = np.sign(vectors[np.abs(vectors).argmax(0), np.arange(k)])
        self.components_ = (vectors * np.where(signs == 0, 1.0, signs)).T.astype(np.float32)
        self.explained_variance_ = np.maximum(values, 0.0) / moments.n  # each component's, over the fit rows
        self.scale_ = np.float32(max(np.sqrt(self.explained_variance_.mean()), 1e-8))
        self.mean_ = moments.mean.astype(np.float32)
        return self

    def transform(self, x: np.ndarray) -> np.ndarray:
        return ((np.asarray(x, dtype=np.float32) - self.mean_) @ self.components_.T) / self.scale_


@dataclass
class CrossFitted:
    """k copies of a detector, each fitted without one fold of the fit sample (see module doc)."""

    make: object  # callable(seed=...) -> Detector
    n_folds: int = 5
    seed: int = 0
    detectors: list = field(default_factory=list)
    fit_ids: np.ndarray | None = None
    fit_folds: np.ndarray | None = None

    def fit(self, x: np.ndarray, object_ids: np.ndarray) -> "CrossFitted":
        self._with_fit_sample(object_ids)
        first = self.make(seed=self.seed)
        if isinstance(first, FoldBatchedDetector):
            self.detectors = first.fit_folds(x, self._train_masks())
        else:
            self.detectors = [self.make(seed=self.seed + fold).fit(x[self.fit_folds != fold])
                              for fold in range(self.n_folds)]
        return self

    def fit_each(self, xs: list[np.ndarray], object_ids: np.ndarray) -> list["CrossFitted"]:
        """One fitted copy of this (unfitted) `CrossFitted` per matrix of `xs`, rows the same
        objects (a model's modalities). Detectors whose fold copies train as one model
        (`FoldBatchedDetector.fit_stacked`) train those of every matrix of a width together."""
        fitted = [replace(self)._with_fit_sample(object_ids) for _ in xs]
        first = self.make(seed=self.seed)
        if not isinstance(first, FoldBatchedDetector):
            return [crossfit.fit(x, object_ids) for crossfit, x in zip(fitted, xs)]
        train = fitted[0]._train_masks()
        for width in dict.fromkeys(x.shape[1] for x in xs):
            chosen = [index for index, x in enumerate(xs) if x.shape[1] == width]
            for index, detectors in zip(chosen, first.fit_stacked([xs[index] for index in chosen], train)):
                fitted[index].detectors = detectors
        return fitted

    def _with_fit_sample(self, object_ids: np.ndarray) -> "CrossFitted":
        self.fit_ids = np.asarray(object_ids, dtype=np.int64)
        self.fit_folds = fold_of(self.fit_ids, self.n_folds, self.seed)
        return self

    def _train_masks(self) -> np.ndarray:
        """k x n: the rows each fold's detector trains on (every fold but its own)."""
        return self.fit_folds[None, :] != np.arange(self.n_folds)[:, None]

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


def robust_location_scale(scores: np.ndarray) -> tuple[float, float]:
    """The median and 1.4826 MAD (a sigma for Gaussian scores) of `scores`."""
    median = float(np.median(scores))
    return median, max(1.4826 * float(np.median(np.abs(scores - median))), 1e-12)


def robust_z(scores: np.ndarray) -> np.ndarray:
    """(score - median) / (1.4826 MAD): how many robust sigmas above the typical object."""
    median, scale = robust_location_scale(scores)
    return (scores - median) / scale


save = write_torch  # detectors are saved like any other torch object

#: Every class and constructor a saved `ModelDetectors` holds (fmb's, PyOD's Isolation Forest, scikit-learn's, zuko's
#: and torch's fitted-state containers, numpy's array rebuilders). Loading allows these and nothing
#: else, so a planted file cannot name a callable that runs code (os.system, eval, ...).
SAVED_GLOBALS = (
    "fmb.detect.tasks:ModelDetectors", "fmb.detect.density:CrossFitted", "fmb.detect.density:Reducer",
    "fmb.detect.calibrate:TailCalibrator", "fmb.detect.fusion:Calibration", "fmb.detect.residual:PCAResidual",
    "fmb.detect.conditional:RedshiftConditional", "fmb.detect.nuisance:ObjectContext",
    "fmb.detect.nuisance:NuisanceCalibrator", "sklearn.tree._classes:DecisionTreeRegressor",
    "fmb.detect.mismatch:ContrastiveMismatch", "fmb.detect.mismatch:PairResidual", "fmb.detect.mismatch:_Critic",
    "functools:partial", "numpy._core.multiarray:_reconstruct", "numpy._core.multiarray:scalar", "numpy:dtype",
    "numpy:ndarray", *(f"numpy.dtypes:{kind}DType" for kind in ("Float32", "Float64", "Int32", "Int64", "UInt8",
                                                                 "UInt32", "Bool", "Void")),
    "pyod.models.iforest:IForest", "sklearn.ensemble._iforest:IsolationForest",
    "sklearn.linear_model._ridge:RidgeCV", "sklearn.tree._classes:ExtraTreeRegressor", "sklearn.tree._tree:Tree",
    "torch.nn.modules.activation:GELU",
    "torch.nn.modules.activation:ReLU", "torch.nn.modules.container:ModuleList",
    "torch.nn.modules.container:Sequential", "torch.nn.modules.linear:Linear", "zuko.distributions:DiagNormal",
    "zuko.flows.autoregressive:MAF", "zuko.flows.autoregressive:MaskedAutoregressiveTransform",
    "zuko.lazy:LazyComposedTransform", "zuko.lazy:UnconditionalDistribution", "zuko.nn:MaskedLinear",
    "zuko.nn:MaskedMLP", "zuko.transforms:MonotonicAffineTransform",
)


def load(path: Path):
    """Saved detectors, unpickled with `SAVED_GLOBALS` and the registered detector classes allowed,
    and nothing else: a file naming any other callable is refused before any of it runs."""
    from fmb.plugins import DETECTORS, detector_class, import_target

    allowed = [import_target(target) for target in SAVED_GLOBALS] + [detector_class(name) for name in DETECTORS]
    with torch.serialization.safe_globals(allowed):
        return read_torch(path, "saved detectors")

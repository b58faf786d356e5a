"""What every detector is, and the one training loop of those trained by gradient steps.

* `Detector`: ``fit(x) -> self``, then ``score(x)`` (higher = more anomalous), on reduced features.
  A detector's hyper-parameters are keyword arguments of its ``__init__`` (scikit-learn style),
  plus ``seed``; they are the fields of its ``section`` (`fmb.detect.sections`: type, limits,
  default and description written once, torch-free, so that the config section ``detect.<name>``
  is built without importing the detector), set as attributes of the same names. Fitted state
  lives in ``attr_`` attributes.
* `FoldBatchedDetector`: a detector trained by gradient steps (the flow, the contrastive critic)
  whose k cross-fitting copies (`fmb.detect.density.CrossFitted`) train as one model: `stack_folds`
  turns k modules into one with a leading fold dimension (k batches in, one batched matmul per
  layer), `FoldBatches` draws each fold's batches from that fold's own training objects only (the
  mask that keeps a fold's objects out of its own model), and one optimiser step updates every
  fold. Elementwise optimisers (Adam, AdamW) on stacked parameters are k independent optimisers;
  the gradient clipping is per fold. A single detector is the case k = 1 of the same code.
  `fit_stacked` trains the copies of several matrices of one width (a model's modalities) in the
  same model. The PCA residual (`fmb.detect.residual`) is one too: its k copies come from one
  pass over the data, each fold's moments pooled.
* `train_with_held_out`: the loop shared by the flow and the contrastive critic: a budget of
  optimiser steps, each fold's held-out loss checked every `check_every` steps and at the last
  step, early stopping per fold (`HeldOutBest`: a fold that stopped keeps its best state and is
  no longer updated in the tracker) until every fold has stopped, the best states restored.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import ClassVar

import numpy as np
import torch

from fmb.errors import FmbError

SCORE_BATCH = 65536  # objects per scoring chunk of the torch detectors
HELD_OUT_SHARE = 0.1  # share of each fold's training objects kept out to decide when to stop


class Detector(ABC):
    """One anomaly detector on reduced features: `fit(x)`, then `score(x)` (higher = more anomalous)."""

    name: ClassVar[str]
    section: ClassVar[type]  # its hyper-parameters, a subclass of fmb.config.Section

    def __init__(self, *, seed: int = 0, **hyper_parameters):
        """The section's fields as attributes, validated (a wrong name or value raises) and defaulted."""
        vars(self).update(self.section(**hyper_parameters).model_dump())
        self.seed = seed

    @abstractmethod
    def fit(self, x: np.ndarray) -> "Detector": ...

    @abstractmethod
    def score(self, x: np.ndarray) -> np.ndarray: ...


class FoldBatchedDetector(Detector):
    """A detector whose cross-fitting copies train together (`fit_folds`); `fit` is one fold of all."""

    seed: int

    def fit(self, x: np.ndarray) -> "FoldBatchedDetector":
        (fitted,) = self.fit_folds(x, np.ones((1, len(x)), dtype=bool))
        vars(self).update(vars(fitted))
        return self

    @abstractmethod
    def fit_folds(self, x: np.ndarray, train: np.ndarray) -> list["FoldBatchedDetector"]:
        """k fitted detectors, the f-th trained on the rows of `x` where `train[f]` (a k x n mask)
        is true, initialised with seed ``self.seed + f``."""

    def fit_stacked(self, xs: list[np.ndarray], train: np.ndarray) -> list[list["FoldBatchedDetector"]]:
        """`fit_folds` of each matrix of `xs` (the same objects, the same width); a detector that
        trains them all as one model overrides it."""
        return [self.fit_folds(x, train) for x in xs]

    def _with_seed(self, seed: int) -> "FoldBatchedDetector":
        twin = copy.copy(self)
        twin.seed = seed
        return twin


class HeldOutBest:
    """Early stopping on held-out losses, one per fold: keeps each fold's best state, says when all stopped.

    Shared by every detector trained by gradient steps, so each keeps the state that generalises
    best rather than the last one, which for small fit samples is memorised. The module's
    parameters carry the folds on their leading dimension (`stack_folds`).
    """

    def __init__(self, patience: int, folds: int = 1, tolerance: float = 1e-3):
        self.patience, self.tolerance = patience, tolerance
        self.best, self.stale = np.full(folds, np.inf), np.zeros(folds, dtype=int)
        self.state: dict | None = None

    @property
    def stopped(self) -> np.ndarray:
        return self.stale >= self.patience

    def check(self, held_loss, module: torch.nn.Module) -> bool:
        """Record each fold's held-out loss of `module`; True when every fold has gone `patience`
        checks in a row without improvement."""
        losses = np.atleast_1d(np.asarray(held_loss, dtype=float))
        running = ~self.stopped
        improved = running & (losses < self.best - self.tolerance)
        self.best[improved] = losses[improved]
        self.stale[improved] = 0
        self.stale[running & ~improved] += 1
        if improved.any():
            params = {name: p.detach() for name, p in module.named_parameters()}
            if self.state is None:
                self.state = {name: p.clone() for name, p in params.items()}
            else:
                chosen = torch.from_numpy(np.flatnonzero(improved))
                for name, p in params.items():
                    index = chosen.to(p.device)
                    self.state[name][index] = p[index]
        return bool(self.stopped.all())

    def restore(self, module: torch.nn.Module) -> None:
        if self.state is None or not np.isfinite(self.best).all():  # a fold's held-out loss was never finite
            raise FmbError(f"{type(module).__name__} training diverged: its held-out loss was never finite "
                           "(check the embeddings for extreme values, or lower the learning rate)")
        with torch.no_grad():
            for name, p in module.named_parameters():
                p.copy_(self.state[name])


class FoldLinear(torch.nn.Module):
    """k linear layers (zuko's masked ones too) at once: (k, batch, in) -> (k, batch, out)."""

    def __init__(self, layers: list[torch.nn.Linear]):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.stack([layer.weight.detach() for layer in layers]))
        self.bias = torch.nn.Parameter(torch.stack([layer.bias.detach() for layer in layers]))
        self.register_buffer("mask", getattr(layers[0], "mask", None))  # the same in every fold

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight if self.mask is None else self.weight * self.mask
        return torch.baddbmm(self.bias.unsqueeze(1), x, weight.transpose(1, 2))


def stack_folds(modules: list[torch.nn.Module]) -> torch.nn.Module:
    """One module that computes `modules` (same architecture) at once on inputs with a leading fold
    dimension: a copy of the first whose linear layers are `FoldLinear`s and whose other
    parameters are stacked (fold first). Its parameters have the names of the originals'."""
    stacked = copy.deepcopy(modules[0])
    linears = [name for name, m in stacked.named_modules() if isinstance(m, torch.nn.Linear)]
    in_linear = {f"{name}.{leaf}" for name in linears for leaf in ("weight", "bias")}
    for name, _ in list(stacked.named_parameters()):
        if name not in in_linear:
            owner, _, leaf = name.rpartition(".")
            values = torch.stack([m.get_parameter(name).detach() for m in modules])
            setattr(stacked.get_submodule(owner), leaf, torch.nn.Parameter(values))
    for name in linears:
        owner, _, leaf = name.rpartition(".")
        setattr(stacked.get_submodule(owner), leaf, FoldLinear([m.get_submodule(name) for m in modules]))
    return stacked


def unstack_folds(stacked: torch.nn.Module, modules: list[torch.nn.Module]) -> None:
    """Copy fold f's parameters of `stacked` into `modules[f]`."""
    with torch.no_grad():
        for name, values in stacked.named_parameters():
            for fold, module in enumerate(modules):
                module.get_parameter(name).copy_(values[fold])


def clip_fold_gradients(module: torch.nn.Module, max_norm: float) -> None:
    """`torch.nn.utils.clip_grad_norm_` for each fold of a `stack_folds` module on its own."""
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    norms = torch.stack([g.flatten(1).pow(2).sum(1) for g in grads]).sum(0).sqrt()
    scale = (max_norm / (norms + 1e-6)).clamp(max=1.0)
    for g in grads:
        g.mul_(scale.view(-1, *[1] * (g.dim() - 1)))


class FoldBatches:
    """Each fold's training objects (its `train` mask row) split into a held-out share and the rest;
    batches of the rest drawn without replacement, epoch after epoch, as a (k, batch) index tensor.

    Every fold draws from its own objects only: this is the mask that keeps an object out of its
    own fold's model. The folds differ in size by a few objects; each epoch every fold takes the
    same number (the smallest fold's), a fresh random subset of its own.
    """

    def __init__(self, train: np.ndarray, generator: torch.Generator):
        self.generator, self.pools, held = generator, [], []
        for row in np.asarray(train, dtype=bool):
            objects = torch.from_numpy(np.flatnonzero(row))
            order = torch.randperm(len(objects), generator=generator)
            n_hold = max(1, int(len(objects) * HELD_OUT_SHARE))
            held.append(objects[order[:n_hold]])
            self.pools.append(objects[order[n_hold:]])
        self.held = torch.stack([h[: min(map(len, held))] for h in held])  # (k, n_held)
        self.n_train = min(map(len, self.pools))
        self.epoch, self.cursor = None, 0

    def next(self, batch: int) -> torch.Tensor:
        if self.epoch is None or self.cursor + batch > self.n_train:
            self.epoch = torch.stack([pool[torch.randperm(len(pool), generator=self.generator)[: self.n_train]]
                                      for pool in self.pools])
            self.cursor = 0
        self.cursor += batch
        return self.epoch[:, self.cursor - batch : self.cursor]


def training_device() -> torch.device:
    """Where the gradient-trained detectors train: the GPU when there is one."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@contextmanager
def one_thread() -> Iterator[None]:
    """Train on one CPU thread, then give back the thread count that was set.

    The detectors' networks are small (a few hundred objects x 32-128 units a layer): a step is
    many tiny kernels, and splitting each over threads costs more in synchronisation than it
    saves; on a machine shared with other jobs the threads spin waiting for each other (measured
    on 2 cores under load: 13x slower with 2 threads than with 1, and no faster when quiet).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` with torch's global RNG seeded by `seed` (its state outside is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def step_budget(epochs: int, n_train: int, batch_size: int, min_steps: int, max_steps: int) -> int:
    """Optimiser steps for `epochs` passes over `n_train` objects, within [min_steps, max_steps]."""
    return int(np.clip(epochs * max(1, n_train // batch_size), min_steps, max_steps))


def train_with_held_out(module: torch.nn.Module, train_step: Callable[[], None], held_out_loss: Callable[[], object],
                        steps: int, check_every: int, patience: int, folds: int = 1) -> np.ndarray:
    """Run `train_step()` up to `steps` times; check `held_out_loss()` (one loss per fold) every
    `check_every` steps and at the last one, stop when every fold has gone `patience` checks
    without improvement, and restore each fold's best state of `module`. Returns the steps each
    fold trained before it stopped (or the last step)."""
    tracker = HeldOutBest(patience, folds)
    trained = np.zeros(folds, dtype=int)
    for step in range(1, steps + 1):
        train_step()
        trained[~tracker.stopped] = step
        if (step % check_every == 0 or step == steps) and tracker.check(held_out_loss(), module):
            break
    tracker.restore(module)
    return trained

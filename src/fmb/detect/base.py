"""What every detector is, and the one training loop of those trained by gradient steps.

* `Detector`: ``fit(x) -> self``, then ``score(x)`` (higher = more anomalous), on reduced features.
  A detector's hyper-parameters are explicit keyword arguments of its ``__init__`` (scikit-learn
  style), each ``Annotated[T, Field(..., description=...)]`` with its default, plus ``seed``; its
  config section ``detect.<name>`` is built from that signature (`fmb.plugins.signature_section`).
  Fitted state lives in ``attr_`` attributes.
* `train_with_held_out`: the loop shared by the flow and the contrastive critic: a budget of
  optimiser steps, a held-out loss checked every `check_every` steps and at the last step, early
  stopping (`HeldOutBest`) and the best state restored.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch

from fmb.errors import FmbError

SCORE_BATCH = 65536  # objects per scoring chunk of the torch detectors


class Detector(ABC):
    """One anomaly detector on reduced features: `fit(x)`, then `score(x)` (higher = more anomalous)."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, x: np.ndarray) -> "Detector": ...

    @abstractmethod
    def score(self, x: np.ndarray) -> np.ndarray: ...


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


def seeded(seed: int, build: Callable[[], torch.nn.Module]) -> torch.nn.Module:
    """`build()` with torch's global RNG seeded by `seed` (its state outside is left as it was)."""
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build()


def step_budget(epochs: int, n_train: int, batch_size: int, min_steps: int, max_steps: int) -> int:
    """Optimiser steps for `epochs` passes over `n_train` objects, within [min_steps, max_steps]."""
    return int(np.clip(epochs * max(1, n_train // batch_size), min_steps, max_steps))


def train_with_held_out(module: torch.nn.Module, train_step: Callable[[], None], held_out_loss: Callable[[], float],
                        steps: int, check_every: int, patience: int) -> int:
    """Run `train_step()` up to `steps` times; check `held_out_loss()` every `check_every` steps and
    at the last one, stop after `patience` checks without improvement, and restore the best state
    of `module`. Returns the number of steps trained."""
    tracker = HeldOutBest(patience)
    step = 0
    for step in range(1, steps + 1):
        train_step()
        if (step % check_every == 0 or step == steps) and tracker.check(held_out_loss(), module):
            break
    tracker.restore(module)
    return step

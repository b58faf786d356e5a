"""The density detector: a masked autoregressive flow trained by maximum likelihood; score = NLL."""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field

from fmb.detect.base import SCORE_BATCH, Detector, seeded, split_held_out, step_budget, train_with_held_out


class FlowDetector(Detector):
    """A masked autoregressive flow (zuko) trained by maximum likelihood; score = NLL.

    Training is counted in optimiser steps (`epochs` worth, within [min_steps, max_steps]), with
    a 10 % held-out part of the fit data checked every `check_every` steps; the best state is kept.
    """

    name = "flow"

    def __init__(
        self,
        *,
        transforms: Annotated[int, Field(ge=1, description="MAF transforms")] = 5,
        hidden: Annotated[int, Field(ge=8, description="hidden units per layer of each transform")] = 128,
        epochs: Annotated[int, Field(ge=1, description="passes over the fit data, counted in steps within "
                                     "[min_steps, max_steps]")] = 30,
        batch_size: Annotated[int, Field(ge=16, description="objects per optimiser step")] = 512,
        lr: Annotated[float, Field(gt=0, description="peak learning rate (Adam, cosine decay)")] = 1e-3,
        patience: Annotated[int, Field(ge=1, description="held-out checks without improvement before stopping")] = 4,
        min_steps: Annotated[int, Field(ge=1, description="optimiser steps per flow at least")] = 800,
        max_steps: Annotated[int, Field(ge=1, description="optimiser steps per flow at most")] = 2000,
        check_every: Annotated[int, Field(ge=1, description="steps between held-out checks")] = 100,
        seed: int = 0,
    ):
        self.transforms, self.hidden, self.epochs, self.batch_size, self.lr = transforms, hidden, epochs, batch_size, lr
        self.patience, self.min_steps, self.max_steps, self.check_every = patience, min_steps, max_steps, check_every
        self.seed = seed

    def fit(self, x: np.ndarray) -> "FlowDetector":
        import zuko

        generator = torch.Generator().manual_seed(self.seed)
        self.flow_ = seeded(self.seed, lambda: zuko.flows.MAF(features=x.shape[1], transforms=self.transforms,
                                                              hidden_features=(self.hidden, self.hidden)))
        held, train = split_held_out(torch.from_numpy(np.asarray(x, dtype=np.float32)), generator)
        steps = step_budget(self.epochs, len(train), self.batch_size, self.min_steps, self.max_steps)
        optimizer = torch.optim.Adam(self.flow_.parameters(), lr=self.lr)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

        def train_step() -> None:
            batch = train[torch.randint(0, len(train), (min(self.batch_size, len(train)),), generator=generator)]
            loss = -self.flow_().log_prob(batch).mean()
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(self.flow_.parameters(), 5.0)
            optimizer.step()
            schedule.step()

        self.steps_trained_ = train_with_held_out(self.flow_, train_step, lambda: float(self._nll(held).mean()),
                                                  steps, self.check_every, self.patience)
        return self

    @torch.no_grad()
    def _nll(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.flow_().log_prob(chunk) for chunk in x.split(SCORE_BATCH)])

    def score(self, x: np.ndarray) -> np.ndarray:
        return self._nll(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy().astype(np.float64)

"""The density detector: a masked autoregressive flow trained by maximum likelihood; score = NLL."""

from __future__ import annotations

import numpy as np
import torch

from fmb.detect.base import (SCORE_BATCH, FoldBatchedDetector, FoldBatches, clip_fold_gradients, one_thread, seeded,
                             stack_folds, step_budget, train_with_held_out, training_device, unstack_folds)
from fmb.detect.sections import FlowSection


class FlowDetector(FoldBatchedDetector):
    """A masked autoregressive flow (zuko) trained by maximum likelihood; score = NLL.

    Training is counted in optimiser steps (`epochs` worth, within [min_steps, max_steps]), with
    a 10 % held-out part of the fit data checked every `check_every` steps; the best state is kept.
    Cross-fitted, the k folds' flows train as one flow with a leading fold dimension
    (`fmb.detect.base.stack_folds`), each on batches of its own training objects.
    """

    name = "flow"
    section = FlowSection

    def _new_flow(self, features: int, seed: int) -> torch.nn.Module:
        import zuko

        return seeded(seed, lambda: zuko.flows.MAF(features=features, transforms=self.transforms,
                                                   hidden_features=(self.hidden, self.hidden)))

    def fit_folds(self, x: np.ndarray, train: np.ndarray) -> list["FlowDetector"]:
        flows = [self._new_flow(x.shape[1], self.seed + fold) for fold in range(len(train))]
        device = training_device()
        data = torch.from_numpy(np.asarray(x, dtype=np.float32)).to(device)
        batches = FoldBatches(train, torch.Generator().manual_seed(self.seed))
        batch = min(self.batch_size, batches.n_train)
        steps = step_budget(self.epochs, batches.n_train, self.batch_size, self.min_steps, self.max_steps)
        with one_thread():
            model = stack_folds(flows).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

            def train_step() -> None:
                loss = -model().log_prob(data[batches.next(batch).to(device)]).mean(1).sum()  # folds add up
                optimizer.zero_grad()
                loss.backward()
                clip_fold_gradients(model, 5.0)
                optimizer.step()
                schedule.step()

            held = data[batches.held.to(device)]
            trained = train_with_held_out(model, train_step, lambda: _held_out_nll(model, held), steps,
                                          self.check_every, self.patience, len(train))
            unstack_folds(model, flows)
        fitted = []
        for fold, flow in enumerate(flows):
            detector = self._with_seed(self.seed + fold)
            detector.flow_, detector.steps_trained_ = flow, int(trained[fold])
            fitted.append(detector)
        return fitted

    @torch.no_grad()
    def _nll(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.flow_().log_prob(chunk) for chunk in x.split(SCORE_BATCH)])

    def score(self, x: np.ndarray) -> np.ndarray:
        return self._nll(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy().astype(np.float64)


@torch.no_grad()
def _held_out_nll(model: torch.nn.Module, held: torch.Tensor) -> np.ndarray:
    """Each fold's mean NLL on its held-out objects (`held`: folds x objects x features)."""
    return -model().log_prob(held).mean(1).cpu().numpy()

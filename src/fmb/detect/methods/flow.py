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
    (`fmb.detect.base.stack_folds`), each on batches of its own training objects; the flows of a
    model's modalities train together too (`fit_stacked`).
    """

    name = "flow"
    section = FlowSection

    def _new_flow(self, features: int, seed: int) -> torch.nn.Module:
        import zuko

        return seeded(seed, lambda: zuko.flows.MAF(features=features, transforms=self.transforms,
                                                   hidden_features=(self.hidden, self.hidden)))

    def fit_folds(self, x: np.ndarray, train: np.ndarray) -> list["FlowDetector"]:
        (fitted,) = self.fit_stacked([x], train)
        return fitted

    def fit_stacked(self, xs: list[np.ndarray], train: np.ndarray) -> list[list["FlowDetector"]]:
        """`fit_folds` of each matrix of `xs` (the same objects, the same width: a model's
        modalities), all m x k flows stacked into one model: one optimiser step trains every
        modality's folds, each on the same batches of objects a fit of that matrix alone draws."""
        m, k = len(xs), len(train)
        flows = [self._new_flow(xs[0].shape[1], self.seed + fold) for _ in xs for fold in range(k)]
        device = training_device()
        data = torch.from_numpy(np.stack([np.asarray(x, dtype=np.float32) for x in xs])).to(device)  # (m, n, f)

        def rows(index: torch.Tensor) -> torch.Tensor:
            """(k, b) object indices -> (m * k, b, features): each matrix's rows for every fold."""
            return data[:, index.to(device)].reshape(m * k, index.shape[1], data.shape[2])

        batches = FoldBatches(train, torch.Generator().manual_seed(self.seed))
        batch = min(self.batch_size, batches.n_train)
        steps = step_budget(self.epochs, batches.n_train, self.batch_size, self.min_steps, self.max_steps)
        with one_thread():
            model = stack_folds(flows).to(device)
            optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
            schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, steps)

            def train_step() -> None:
                loss = -model().log_prob(rows(batches.next(batch))).mean(1).sum()  # the flows' losses add up
                optimizer.zero_grad()
                loss.backward()
                clip_fold_gradients(model, 5.0)
                optimizer.step()
                schedule.step()

            held = rows(batches.held)
            trained = train_with_held_out(model, train_step, lambda: _held_out_nll(model, held), steps,
                                          self.check_every, self.patience, m * k)
            unstack_folds(model, flows)
        fitted = []
        for index, flow in enumerate(flows):
            detector = self._with_seed(self.seed + index % k)
            detector.flow_, detector.steps_trained_ = flow, int(trained[index])
            fitted.append(detector)
        return [fitted[start:start + k] for start in range(0, m * k, k)]

    @torch.no_grad()
    def _nll(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([-self.flow_().log_prob(chunk) for chunk in x.split(SCORE_BATCH)])

    def score(self, x: np.ndarray) -> np.ndarray:
        return self._nll(torch.from_numpy(np.asarray(x, dtype=np.float32))).numpy().astype(np.float64)


@torch.no_grad()
def _held_out_nll(model: torch.nn.Module, held: torch.Tensor) -> np.ndarray:
    """Each fold's mean NLL on its held-out objects (`held`: folds x objects x features)."""
    return -model().log_prob(held).mean(1).cpu().numpy()

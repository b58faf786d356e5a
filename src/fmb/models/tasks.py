"""`fmb adapt MODEL`: stage 1, one function for every model.

Training and validation objects are split by a seeded hash of their id (`is_validation`), so the
split is the same on every run and resume; batches are streamed unit by unit (units shuffled per
epoch), and the shared `Trainer` does the rest. The pixel reference is fitted instead of trained.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader

from fmb.config import AdaptSettings, ResolvedConfig
from fmb.data.index import read_index_table
from fmb.data.loader import BatchStream, WorkUnit, is_validation, plan_units
from fmb.data.sources import open_source
from fmb.errors import FmbError
from fmb.io import write_torch
from fmb.layout import ModelFiles
from fmb.models.base import Encoder, pick_device
from fmb.models.registry import build_encoder
from fmb.models.trainer import History, Trainer
from fmb.stage import ModelStage

_UNIT_ROWS = 256  # training reads in runs of consecutive rows; units are shuffled each epoch


def adapt(config: ResolvedConfig, model: str, log=print) -> dict:
    """Adapt `model` to the survey: the encoder's own `adapt` (train, or fit for the pixel reference)."""
    section = config.section(f"models.{model}")
    encoder = build_encoder(config, model, weights="base")
    run = AdaptRun(config, encoder, section, _training_units(config, section.adapt), config.layout.model(model), log)
    return {"model": model, "directory": run.files.dir, **encoder.adapt(run)}


@dataclass
class AdaptRun:
    """What an encoder's `adapt` works with: the run's training objects, where to write, and the
    two ways of adapting fmb has (train with the shared trainer, or fit on a sample)."""

    config: ResolvedConfig
    encoder: Encoder
    section: object  # the model's config section
    units: list[WorkUnit]
    files: ModelFiles
    log: object = print

    def train(self) -> dict:
        device = pick_device(self.section.device)
        self.encoder.to(device)
        history = _train(self.config, self.encoder, self.units, self.section.adapt, self.files.dir, device, self.log)
        return {"epochs": len(history.epochs), "best_val_loss": history.best_val_loss,
                "stopped_early": history.stopped_early}

    def sample(self, count: int) -> dict[str, torch.Tensor]:
        """One merged batch of up to `count` training objects, units in a seeded random order."""
        order = np.random.default_rng(self.config.seed).permutation(len(self.units))
        stream = _stream(self.config, self.encoder, [self.units[i] for i in order], self.section.adapt, False)
        batches, seen = [], 0
        for batch in _batches(stream, 0):
            batches.append(batch)
            seen += len(batch["object_id"])
            if seen >= count:
                break
        if seen < 2:
            raise FmbError(f"too few usable objects to fit {self.encoder.name}")
        return {key: torch.cat([b[key] for b in batches])[:count] for key in batches[0]}

    def save_adapted(self, **extra) -> None:
        write_torch({"model": self.encoder.adapted_state(), **extra}, self.files.best)


def _training_units(config: ResolvedConfig, settings: AdaptSettings) -> list[WorkUnit]:
    index = read_index_table(config.layout.data.dir)
    if settings.max_objects is not None and index.num_rows > settings.max_objects:
        keep = np.sort(np.random.default_rng(config.seed).choice(index.num_rows, settings.max_objects, replace=False))
        index = index.take(keep)
    return plan_units(index, _UNIT_ROWS)


def _stream(config, encoder: Encoder, units: list[WorkUnit], settings: AdaptSettings, validation: bool):
    def keep(ids: np.ndarray) -> np.ndarray:
        held_out = is_validation(ids, settings.val_fraction, config.seed)
        return held_out if validation else ~held_out

    return BatchStream(open_source(config), units, encoder.preprocessor, settings.batch_size, config.data, keep)


def _batches(stream: BatchStream, workers: int) -> Iterator[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False)
    for item in loader:
        if item.batch is not None and len(item.object_ids) > 1:  # a batch of one has no contrast
            yield item.batch


def _train(config, encoder, units, settings: AdaptSettings, out, device, log) -> History:
    n_train = sum(int((~is_validation(u.object_ids, settings.val_fraction, config.seed)).sum()) for u in units)
    steps_per_epoch = max(1, n_train // (settings.batch_size * settings.grad_accum))
    trainer = Trainer(encoder, settings, out, device, seed=config.seed)

    def train_batches(epoch: int) -> Iterator[dict]:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(units))
        return _batches(_stream(config, encoder, [units[i] for i in order], settings, False), settings.num_workers)

    def val_batches() -> Iterator[dict]:
        return _batches(_stream(config, encoder, units, settings, True), settings.num_workers)

    return trainer.fit(train_batches, val_batches, steps_per_epoch, log=log)


def _adapt_inputs(config: ResolvedConfig, model: str) -> list:
    return [config.layout.data.index, config.layout.data.index_meta]  # index_meta: the data's fingerprint


def _adapt_outputs(config: ResolvedConfig, model: str) -> list:
    return [config.layout.model(model).dir]


#: Stage 1, once per model of run.models.
ADAPT = ModelStage("adapt", lambda config, log, model: adapt(config, model, log=log),
                   ("models.{model}", "-models.{model}.embed", "data", "seed"), _adapt_inputs, _adapt_outputs, after=("index",))

"""`fmb adapt MODEL`: stage 1, one function for every model.

Training and validation objects are split by a seeded hash of their id (`is_validation`), so the
split is the same on every run and resume; batches are streamed unit by unit (units shuffled per
epoch), and the shared `Trainer` does the rest. The pixel reference is fitted instead of trained.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader

from fmb.config import AdaptSettings, ResolvedConfig
from fmb.data.index import read_index_table
from fmb.data.loader import BatchStream, WorkUnit, is_validation, plan_units
from fmb.data.sources import open_source
from fmb.data.tasks import data_dir
from fmb.errors import FmbError
from fmb.io import write_torch
from fmb.models.base import Encoder, pick_device
from fmb.models.registry import adapted_dir, build_encoder
from fmb.models.trainer import BEST, History, Trainer

_UNIT_ROWS = 256  # training reads in runs of consecutive rows; units are shuffled each epoch


def adapt(config: ResolvedConfig, model: str, log=print) -> dict:
    section = getattr(config.models, model)
    encoder = build_encoder(config, model, weights="base")
    units = _training_units(config, section.adapt)
    out = adapted_dir(config, model)
    if model == "pixels":
        return _fit_reference(config, encoder, units, out)
    device = pick_device(section.device)
    encoder.to(device)
    history = _train(config, encoder, units, section.adapt, out, device, log)
    return {"model": model, "directory": out, "epochs": len(history.epochs), "best_val_loss": history.best_val_loss,
            "stopped_early": history.stopped_early}


def _training_units(config: ResolvedConfig, settings: AdaptSettings) -> list[WorkUnit]:
    index = read_index_table(data_dir(config))
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


def _fit_reference(config, encoder, units: list[WorkUnit], out) -> dict:
    settings = config.models.pixels
    order = np.random.default_rng(config.seed).permutation(len(units))
    batches, count = [], 0
    for batch in _batches(_stream(config, encoder, [units[i] for i in order], settings.adapt, False), 0):
        batches.append(batch)
        count += len(batch["object_id"])
        if count >= settings.fit_objects:
            break
    if count < 2:
        raise FmbError("too few usable objects to fit the pixel reference")
    merged = {key: torch.cat([b[key] for b in batches])[: settings.fit_objects] for key in batches[0]}
    encoder.fit(merged, seed=config.seed)
    write_torch({"model": encoder.adapted_state(), "fitted_on": int(len(merged["object_id"]))}, out / BEST)
    return {"model": "pixels", "directory": out, "fitted_on": int(len(merged["object_id"]))}

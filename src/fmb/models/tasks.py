"""`fmb adapt MODEL`: stage 1, one function for every model.

Training and validation objects are split by a seeded hash of their id (`is_validation`), so the
split is the same on every run and resume; batches are streamed unit by unit (units shuffled per
epoch), and the shared `Trainer` does the rest. The pixel reference is fitted instead of trained.

Under torchrun (`adapt_on_every_rank`) every rank streams the same units in the same order and
reads only its share of each global batch of `adapt.batch_size` objects (`Ranks.share_of`), padded
so that every rank has an item for every global batch (`_Aligned`): together the ranks train on the
batches one process would, whatever their number.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset

from fmb.config import AdaptSettings, ResolvedConfig
from fmb.data.index import read_index_table
from fmb.data.loader import BatchStream, StreamItem, WorkUnit, is_validation, plan_units
from fmb.data.schema import SPECTRUM_LENGTH
from fmb.data.sources import open_source
from fmb.data.tasks import check_indexed_source
from fmb.errors import ConfigError, FmbError
from fmb.io import write_torch
from fmb.layout import ModelFiles
from fmb.models.base import Encoder, pick_device
from fmb.models.distributed import SINGLE, Ranks, lead_and_follow, session
from fmb.models.registry import build_encoder
from fmb.models.trainer import History, Trainer
from fmb.stage import ModelStage

_UNIT_ROWS = 256  # training reads in runs of consecutive rows; units are shuffled each epoch


def adapt(config: ResolvedConfig, model: str, log=print) -> dict:
    """Adapt `model` to the survey: the encoder's own `adapt` (train, or fit for the pixel reference)."""
    section = config.section(f"models.{model}")
    encoder = build_encoder(config, model, weights="base")
    with session(pick_device(section.device)) as (ranks, device):
        run = AdaptRun(config, encoder, section, _training_units(config, section.adapt), config.layout.model(model),
                       log, ranks, device)
        return {"model": model, "directory": run.files.dir, **encoder.adapt(run)}


def adapt_on_every_rank(config: ResolvedConfig, model: str, run_stage: Callable[[Callable | None], object]):
    """`fmb adapt MODEL` in each process torchrun starts: rank 0 runs the stage through the engine,
    `run_stage(action)` (its cache check, old outputs and state: one writer), and every other rank
    runs `adapt` beside each run of that action. Returns what `run_stage` returns on rank 0, None on
    the others. In one process (no torchrun) it is `run_stage(None)`: the stage's own action."""
    with session(pick_device(config.section(f"models.{model}").device)) as (ranks, _):
        if ranks.world == 1:
            return run_stage(None)
        if config.executor.kind == "slurm":  # the job would train alone, the other ranks here wait for it
            raise FmbError("fmb adapt under torchrun trains in the processes torchrun started: leave out --slurm "
                           "(executor.kind slurm), or run torchrun inside the SLURM job")
        # every rank adapts with the config rank 0's engine gives the stage (its outputs in their
        # staging copy), so a resumed run reads the same checkpoint on every rank
        return lead_and_follow(ranks, lambda joined: run_stage(lambda cfg, log: joined(lambda: adapt(cfg, model, log),
                                                                                       cfg)),
                               lambda staged: adapt(staged, model, log=lambda _: None))


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
    ranks: Ranks = SINGLE  # this process among those torchrun started
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    def train(self) -> dict:
        # channels_last: the layout oneDNN's and cuDNN's convolutions prefer (AION's adapters: 1.3x less
        # CPU a step); the batches' images follow it (`fmb.models.trainer`)
        self.encoder.to(self.device, memory_format=torch.channels_last)
        history = _train(self.config, self.encoder, self.units, self.section.adapt, self.files.dir, self.device,
                         self.log, self.ranks)
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
        """Write the adapted state (rank 0; every rank fitted the same, the others wait)."""
        if self.ranks.main:
            write_torch({"model": self.encoder.adapted_state(), **extra}, self.files.best)
        self.ranks.barrier()


def _training_units(config: ResolvedConfig, settings: AdaptSettings) -> list[WorkUnit]:
    index = read_index_table(config.layout.data.dir)
    if settings.max_objects is not None and index.num_rows > settings.max_objects:
        keep = np.sort(np.random.default_rng(config.seed).choice(index.num_rows, settings.max_objects, replace=False))
        index = index.take(keep)
    return plan_units(index, _UNIT_ROWS)


def _stream(config, encoder: Encoder, units: list[WorkUnit], settings: AdaptSettings, validation: bool,
            ranks: Ranks = SINGLE):
    """Batches of the training (or validation) objects of `units`; on several ranks, this rank's
    part of each global batch."""
    def split(ids: np.ndarray) -> np.ndarray:
        held_out = is_validation(ids, settings.val_fraction, config.seed)
        return held_out if validation else ~held_out

    def keep(ids: np.ndarray) -> np.ndarray:
        return ranks.share_of(split(ids), settings.batch_size)

    stream = BatchStream(open_source(config), units, encoder.preprocessor, ranks.per_rank(settings.batch_size),
                         config.data, keep)
    if ranks.world == 1:
        return stream
    return _Aligned(stream, {u.unit_id: max(1, -(-int(split(u.object_ids).sum()) // settings.batch_size))
                             for u in units})


class _Aligned(IterableDataset):
    """A rank's stream with as many items per unit as the unit has global batches (its share of a
    unit's last batch may be empty): every rank must step through every global batch, in the same
    order, which also keeps DataLoader workers' interleaving the same on every rank."""

    def __init__(self, stream: BatchStream, batches: dict[int, int]):
        self.stream, self.batches = stream, batches  # unit id -> global batches of the unit

    def __iter__(self) -> Iterator[StreamItem]:
        for item in self.stream:  # in a DataLoader worker: that worker's units, each in order
            yield item
            if item.batch_no == item.n_batches - 1:
                count = self.batches[item.unit_id]
                for batch_no in range(item.n_batches, count):
                    yield StreamItem(item.unit_id, batch_no, count, [], None, [])


def _parts(stream: IterableDataset, workers: int) -> Iterator[dict | None]:
    """Each item's batch in stream order, None where none of its objects is usable."""
    for item in DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False):
        yield item.batch


def _batches(stream: BatchStream, workers: int) -> Iterator[dict]:
    for batch in _parts(stream, workers):
        if batch is not None and len(batch["object_id"]) > 1:  # a batch of one has no contrast
            yield batch


def _train(config, encoder, units, settings: AdaptSettings, out, device, log, ranks: Ranks = SINGLE) -> History:
    ranks.per_rank(settings.batch_size)  # before anything else: a batch size the ranks cannot share is an error
    n_train = sum(int((~is_validation(u.object_ids, settings.val_fraction, config.seed)).sum()) for u in units)
    steps_per_epoch = max(1, n_train // (settings.batch_size * settings.grad_accum))
    trainer = Trainer(encoder, settings, out, device, seed=config.seed, ranks=ranks)

    def train_batches(epoch: int) -> Iterator[dict | None]:
        order = np.random.default_rng([config.seed, epoch]).permutation(len(units))
        return _parts(_stream(config, encoder, [units[i] for i in order], settings, False, ranks), settings.num_workers)

    def val_batches() -> Iterator[dict | None]:
        return _parts(_stream(config, encoder, units, settings, True, ranks), settings.num_workers)

    # a global batch of one object has no contrast
    return trainer.fit(train_batches, val_batches, steps_per_epoch, log=log, min_batch=2)


def _adapt_inputs(config: ResolvedConfig, model: str) -> list:
    return [config.layout.data.index, config.layout.data.index_meta]  # index_meta: the data's fingerprint


def _adapt_outputs(config: ResolvedConfig, model: str) -> list:
    return [config.layout.model(model).dir]


#: Stage 1, once per model of run.models.
def check_model_inputs(config: ResolvedConfig, model: str) -> None:
    """Refuse what no model can read: data other than the run indexed, or spectra off DESI's grid
    (data.spectrum_length lets validation accept them; the models would fail deep inside)."""
    check_indexed_source(config)
    if config.data.spectrum_length != SPECTRUM_LENGTH:
        raise ConfigError(f"data.spectrum_length={config.data.spectrum_length}: {model} reads spectra on DESI's "
                          f"{SPECTRUM_LENGTH}-pixel grid (3600-9824 A); resample the survey's spectra onto it")


ADAPT = ModelStage("adapt", lambda config, log, model: adapt(config, model, log=log),
                   ("models.{model}", "-models.{model}.embed", "data", "seed"), _adapt_inputs, _adapt_outputs, after=("index",),
                   check=check_model_inputs)

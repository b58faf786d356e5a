"""One trainer for every adaptation (AION adapters, AstroPT, AstroCLIP heads), in one process or in
each of the processes `torchrun` starts.

What a model must offer (`Adaptable`): its trainable parameters, a loss on a batch, and the state
to checkpoint. The trainer adds the rest: AdamW, linear warm-up then cosine decay (the learning
rate is set *before* each optimiser step), gradient accumulation and clipping, autocast
(`training_dtype`; fp16 with a gradient scaler), optional gradient checkpointing of the blocks the
model names, a validation pass each epoch with early stopping, atomic checkpoints at the end of
each epoch that resume exactly (model, optimiser, schedule, scaler, history), a loss history as
JSON and a plot, all seeded.

Several processes (`fmb.models.distributed`): each rank is given its part of every global batch
(`Ranks.share_of`), in lockstep with the others (`_lockstep`: the object count of each global batch
is summed over the ranks first, so all skip the same batches and stop together). The model is
wrapped in DistributedDataParallel and each rank's loss weighted by its share of the batch, so the
averaged gradient is that of the mean loss over the whole global batch, as in one process; losses
and metrics are summed over ranks. Only rank 0 logs and writes; the others wait at a barrier. The
checkpoint holds the global step and epoch and the unwrapped model's state, and the random state of
epoch e on rank r is seeded from (seed, e, r), so a run resumes on any number of processes.

What is bit-identical: a resumed run and an uninterrupted one on the same number of processes.
Across numbers of processes results agree to float rounding (the gradient is summed in another
order), for losses that are means over objects; not for losses that couple the objects of a batch
(AstroCLIP's contrastive loss sees each rank's part only), for BatchNorm in training mode
(statistics of each rank's part; running statistics are rank 0's) or for random ops such as
dropout (each rank draws its own).
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import numpy as np
import torch
from torch.utils.checkpoint import checkpoint

from fmb.config import AdaptSettings
from fmb.errors import FmbError
from fmb.io import atomic_path, read_torch, write_json, write_torch
from fmb.layout import ModelFiles
from fmb.models.base import autocast_dtype, to_device
from fmb.models.distributed import SINGLE, Ranks

CHECKPOINT_FORMAT = 2  # 1 (no "format" key): + RNG states of the one process, now seeded per epoch and rank


class TrainingDiverged(FmbError):
    """The loss became NaN or infinite: a setting to change, not a crash."""


class Adaptable(Protocol):
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def training_loss(self, batch: dict) -> torch.Tensor: ...

    def adapted_state(self) -> dict: ...

    def load_adapted_state(self, state: dict) -> None: ...

    def train(self, mode: bool = True): ...

    # optional, for adapt.gradient_checkpointing (a default in fmb.models.base.Encoder):
    # def gradient_checkpoint_blocks(self) -> list[torch.nn.Module]: ...


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    stopped_early: bool = False


def training_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `adapt.amp` (None: fp32; off is fp32's earlier name).

    The rule for auto: bf16 where the device computes it natively (a CUDA GPU of compute capability
    8.0 or later), fp32 everywhere else. On CPUs bf16 autocast is slower than fp32 without AMX and
    would change results for nothing; fp16 needs loss scaling, which skips steps while it finds its
    scale, so it is used only when asked for."""
    if amp == "auto" and not (device.type == "cuda" and torch.cuda.is_bf16_supported(including_emulation=False)):
        return None
    return autocast_dtype("off" if amp == "fp32" else amp, device)


class Trainer:
    def __init__(self, model: Adaptable, settings: AdaptSettings, out_dir: Path, device: torch.device | str = "cpu",
                 seed: int = 42, ranks: Ranks = SINGLE):
        self.model, self.settings, self.out_dir, self.seed, self.ranks = model, settings, Path(out_dir), seed, ranks
        self.files = ModelFiles(self.out_dir)
        self.device = torch.device(device)
        self.dtype = training_dtype(settings.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        params = [p for p in model.trainable_parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.history = History()
        self.step = 0
        self.epoch = 0
        self._loss = model.training_loss  # the forward of a step: through DistributedDataParallel on several ranks
        self._ddp: torch.nn.parallel.DistributedDataParallel | None = None

    # -- schedule ---------------------------------------------------------------------------------
    def lr_at(self, step: int, total_steps: int) -> float:
        """Linear warm-up to `lr`, then cosine decay to `min_lr_ratio * lr` at `total_steps`."""
        s = self.settings
        warmup = max(1, int(round(s.warmup_fraction * total_steps)))
        if step < warmup:
            return s.lr * (step + 1) / warmup
        progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return s.lr * (s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))

    # -- training -------------------------------------------------------------------------------
    def fit(
        self,
        train_batches: Callable[[int], Iterable[dict | None]],
        val_batches: Callable[[], Iterable[dict | None]] | None,
        steps_per_epoch: int,
        log: Callable[[str], None] = print,
        min_batch: int = 1,
    ) -> History:
        """Train for `settings.epochs` (resuming from the checkpoint in `out_dir` if there is one).

        `train_batches(epoch)` yields the epoch's batches (shuffled by epoch for reproducibility) or,
        on several ranks, this rank's part of each global batch (None where it has no object), the
        same number on every rank; a global batch of fewer than `min_batch` objects is skipped.
        `steps_per_epoch` counts optimiser steps, for the schedule.
        """
        s = self.settings
        say = log if self.ranks.main else (lambda _: None)
        total_steps = min(s.epochs * steps_per_epoch, s.max_steps or math.inf)
        if self.resume():
            say(f"resumed at epoch {self.epoch}, step {self.step}")
        with self._prepared():
            while self.epoch < s.epochs and not self.history.stopped_early and self.step < total_steps:
                started = time.perf_counter()
                _seed_everything(self.seed, self.epoch, self.ranks.rank)
                train_loss = self._train_epoch(train_batches(self.epoch), total_steps, min_batch)
                val_loss = self.evaluate(val_batches(), min_batch) if val_batches is not None else train_loss
                self._end_epoch(train_loss, val_loss, time.perf_counter() - started)
                say(f"epoch {self.epoch}/{s.epochs}: train {train_loss:.4f}  val {val_loss:.4f}  "
                    f"lr {self.optimizer.param_groups[0]['lr']:.2e}")
        if self.ranks.main:
            self.save_history()
        self.ranks.barrier()
        return self.history

    @contextmanager
    def _prepared(self) -> Iterator[None]:
        """For the length of `fit`: gradient checkpointing if asked, and on several ranks the model
        in DistributedDataParallel with only its trainable parameters requiring gradients (DDP
        expects a gradient for every such parameter from every rank)."""
        with ExitStack() as stack:
            if self.settings.gradient_checkpointing:
                stack.enter_context(_checkpointing(self.model))
            if self.ranks.world > 1:
                stack.enter_context(_only_requiring_grad(self.model, self.params))
                device_ids = [self.device.index] if self.device.type == "cuda" else None
                self._ddp = torch.nn.parallel.DistributedDataParallel(_LossOf(self.model, self.params),
                                                                      device_ids=device_ids)
                self._loss = self._ddp
                stack.callback(self._unwrap)
            yield

    def _unwrap(self) -> None:
        self._ddp, self._loss = None, self.model.training_loss

    def _diverged(self, what: str) -> None:
        kept = f"the checkpoint of epoch {self.epoch} in {self.out_dir} is kept" if self.epoch else "nothing was saved"
        raise TrainingDiverged(f"adaptation diverged: {what}; lower adapt.lr (now {self.settings.lr:g}) or keep "
                               f"adapt.grad_clip on ({kept})")

    def _train_epoch(self, batches: Iterable[dict | None], total_steps: int, min_batch: int = 1) -> float:
        self.model.train(True)
        s = self.settings
        losses = []
        self.optimizer.zero_grad(set_to_none=True)
        micro = 0
        for part, size, total in _lockstep(batches, self.ranks, min_batch):
            micro += 1
            last = micro % s.grad_accum == 0  # of the accumulation: the gradients are summed over ranks now
            with self._ddp.no_sync() if self._ddp is not None and not last else nullcontext():
                with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                    loss = self._loss(_to_device(part, self.device))
                value = self.ranks.sum([float(loss.detach()) * size])[0] / total
                if not math.isfinite(value):
                    self._diverged(f"the training loss is {value} at step {self.step} (epoch {self.epoch})")
                # this rank's share of the global batch: DDP's average over ranks is then the global mean
                self.scaler.scale(loss * (size * self.ranks.world / total) / s.grad_accum).backward()
            losses.append(value)
            if last:
                self._optimizer_step(total_steps)
                if self.step >= total_steps:
                    break
        return float(np.mean(losses)) if losses else math.nan

    def _optimizer_step(self, total_steps: int) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step, total_steps)
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.params, self.settings.grad_clip) if self.settings.grad_clip > 0 else None
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.history.steps.append({"step": self.step, "lr": self.optimizer.param_groups[0]["lr"],
                                   "grad_norm": float(norm) if norm is not None else None})

    @torch.no_grad()
    def evaluate(self, batches: Iterable[dict | None], min_batch: int = 1) -> float:
        self.model.train(False)
        total, count = 0.0, 0
        for part, size, _ in _lockstep(batches, self.ranks, min_batch):
            if part is None:
                continue
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = self.model.training_loss(_to_device(part, self.device))
            total += float(loss) * size
            count += size
        total, count = self.ranks.sum([total, count])
        if not math.isfinite(total):  # else no epoch would ever improve, and nothing be saved
            self._diverged(f"the validation loss is {total} after epoch {self.epoch + 1}")
        return total / count if count else math.nan

    def _end_epoch(self, train_loss: float, val_loss: float, seconds: float) -> None:
        s = self.settings
        self.history.epochs.append({"epoch": self.epoch, "train_loss": train_loss, "val_loss": val_loss,
                                    "step": self.step, "seconds": round(seconds, 3)})
        improved = val_loss < self.history.best_val_loss - s.min_delta
        if improved:
            self.history.best_val_loss, self.history.best_epoch = val_loss, self.epoch
        elif self.epoch - self.history.best_epoch >= s.patience:
            self.history.stopped_early = True
        self.epoch += 1
        if self.ranks.main:
            self.save_checkpoint()
            if improved:
                write_torch({"model": self.model.adapted_state(), "epoch": self.epoch - 1, "val_loss": val_loss},
                            self.files.best)
        self.ranks.barrier()

    # -- persistence ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        write_torch(
            {
                "format": CHECKPOINT_FORMAT,
                "model": self.model.adapted_state(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,  # optimiser steps over all ranks: one per global batch
                "epoch": self.epoch,
                "history": asdict(self.history),
                "settings": self.settings.model_dump(),
                "world_size": self.ranks.world,  # for the record: a checkpoint resumes on any number
            },
            self.files.checkpoint,
        )

    def resume(self) -> bool:
        """Load the checkpoint if there is one (every rank reads it). Format 1 checkpoints load too:
        their RNG states are not needed, since each epoch is seeded from (seed, epoch, rank)."""
        path = self.files.checkpoint
        if not path.is_file():
            return False
        state = read_torch(path, "an adaptation checkpoint")
        self.model.load_adapted_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.history = History(**state["history"])
        return True

    def save_history(self) -> None:
        write_json(asdict(self.history), self.files.history)
        plot_history(self.history, self.files.history_plot)


class _LossOf(torch.nn.Module):
    """A model's training loss as a module's forward, for DistributedDataParallel. A rank with no
    object in a global batch passes None: a zero loss that reaches every trainable parameter, so
    that it still joins the gradient sum (with nothing)."""

    def __init__(self, model, params: list[torch.nn.Parameter]):
        super().__init__()
        self.model, self.params = model, params

    def forward(self, batch: dict | None) -> torch.Tensor:
        if batch is None:
            return sum(p.sum() for p in self.params) * 0.0
        return self.model.training_loss(batch)


def _lockstep(parts: Iterable[dict | None], ranks: Ranks, min_batch: int) -> Iterator[tuple[dict | None, int, int]]:
    """(this rank's part, its object count, the global batch's count) for each global batch of at
    least `min_batch` (and one) objects; every rank moves on together, and all stop when all have run out."""
    min_batch = max(1, min_batch)
    if ranks.world == 1:
        for part in parts:
            size = _batch_size(part)
            if size >= min_batch:
                yield part, size, size
        return
    iterator, end = iter(parts), object()
    while True:
        part = next(iterator, end)
        size = 0 if part is end else _batch_size(part)
        ended, total = ranks.sum([part is end, size])
        if ended:
            if ended != ranks.world:
                raise FmbError(f"{int(ended)} of {ranks.world} processes ran out of batches before the others: "
                               "every rank must be given its part of every global batch")
            return
        if total >= min_batch:
            yield part, size, int(total)


@contextmanager
def _checkpointing(model) -> Iterator[None]:
    """Recompute the activations of the model's `gradient_checkpoint_blocks` in the backward pass
    instead of keeping them (torch.utils.checkpoint, non-reentrant: works with DDP and autocast, and
    replays the random state, so results do not change), for as long as the context lasts."""
    blocks = list({id(b): b for b in getattr(model, "gradient_checkpoint_blocks", lambda: [])()}.values())
    if not blocks:
        raise FmbError(f"adapt.gradient_checkpointing is on, but {type(model).__name__} names no blocks to "
                       "recompute (gradient_checkpoint_blocks); turn it off for this model")
    for block in blocks:
        block.forward = partial(_recomputed, block.forward)  # an instance attribute shadows the class's
    try:
        yield
    finally:
        for block in blocks:
            del block.forward


def _recomputed(forward: Callable, *args, **kwargs):
    if not torch.is_grad_enabled():
        return forward(*args, **kwargs)
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)


@contextmanager
def _only_requiring_grad(model, params: list[torch.nn.Parameter]) -> Iterator[None]:
    trainable = {id(p) for p in params}
    frozen = [p for p in model.parameters() if p.requires_grad and id(p) not in trainable]
    for p in frozen:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in frozen:
            p.requires_grad_(True)


def plot_history(history: History, path: Path) -> None:
    from fmb.viz.style import fmb_style

    if not history.epochs:
        return
    with fmb_style():
        import matplotlib.pyplot as plt

        figure, axis = plt.subplots(figsize=(5.5, 3.6))
        epochs = [e["epoch"] for e in history.epochs]
        axis.plot(epochs, [e["train_loss"] for e in history.epochs], "o-", label="train")
        axis.plot(epochs, [e["val_loss"] for e in history.epochs], "s-", label="validation")
        if history.best_epoch >= 0:
            axis.axvline(history.best_epoch, color="0.6", ls=":", label=f"best (epoch {history.best_epoch})")
        axis.set_xlabel("epoch")
        axis.set_ylabel("loss")
        axis.legend()
        with atomic_path(path) as temporary:
            figure.savefig(temporary, format="png")
        plt.close(figure)


def _to_device(batch: dict | None, device: torch.device) -> dict | None:
    if batch is None:
        return None
    return {k: to_device(v, device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: dict | None) -> int:
    return 0 if batch is None else next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))


def _seed_everything(seed: int, epoch: int, rank: int) -> None:
    """The random state of an epoch on a rank: the same whether the run was resumed or not."""
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])
    random.seed(value)
    np.random.seed(value)
    torch.manual_seed(value)

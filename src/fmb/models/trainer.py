"""One trainer for every adaptation (AION adapters, AstroPT, AstroCLIP heads).

What a model must offer (`Adaptable`): its trainable parameters, a loss on a batch, and the state
to checkpoint. The trainer adds the rest: AdamW, linear warm-up then cosine decay (the learning
rate is set *before* each optimiser step), gradient accumulation and clipping, autocast (bf16 on
GPU; fp16 with a gradient scaler if asked), a validation pass each epoch with early stopping,
atomic checkpoints that resume exactly (model, optimiser, schedule, scaler, RNG states, history),
a loss history as JSON and a plot, all seeded.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from fmb.config import AdaptSettings
from fmb.errors import FmbError
from fmb.io import atomic_path, read_torch, write_json, write_torch
from fmb.layout import ModelFiles
from fmb.models.base import autocast_dtype


class TrainingDiverged(FmbError):
    """The loss became NaN or infinite: a setting to change, not a crash."""


class Adaptable(Protocol):
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...

    def training_loss(self, batch: dict) -> torch.Tensor: ...

    def adapted_state(self) -> dict: ...

    def load_adapted_state(self, state: dict) -> None: ...

    def train(self, mode: bool = True): ...


@dataclass
class History:
    epochs: list[dict] = field(default_factory=list)
    steps: list[dict] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_epoch: int = -1
    stopped_early: bool = False


class Trainer:
    def __init__(self, model: Adaptable, settings: AdaptSettings, out_dir: Path, device: torch.device | str = "cpu",
                 seed: int = 42):
        self.model, self.settings, self.out_dir, self.seed = model, settings, Path(out_dir), seed
        self.files = ModelFiles(self.out_dir)
        self.device = torch.device(device)
        self.dtype = autocast_dtype(settings.amp, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.dtype == torch.float16)
        params = [p for p in model.trainable_parameters() if p.requires_grad]
        if not params:
            raise ValueError("the model has no trainable parameters")
        self.params = params
        self.optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=settings.weight_decay)
        self.history = History()
        self.step = 0
        self.epoch = 0

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
        train_batches: Callable[[int], Iterable[dict]],
        val_batches: Callable[[], Iterable[dict]] | None,
        steps_per_epoch: int,
        log: Callable[[str], None] = print,
    ) -> History:
        """Train for `settings.epochs` (resuming from the checkpoint in `out_dir` if there is one).

        `train_batches(epoch)` yields the epoch's batches (shuffled by epoch for reproducibility);
        `steps_per_epoch` counts optimiser steps, for the schedule.
        """
        s = self.settings
        total_steps = min(s.epochs * steps_per_epoch, s.max_steps or math.inf)
        if self.resume():
            log(f"resumed at epoch {self.epoch}, step {self.step}")
        else:
            _seed_everything(self.seed)
        while self.epoch < s.epochs and not self.history.stopped_early and self.step < total_steps:
            started = time.perf_counter()
            train_loss = self._train_epoch(train_batches(self.epoch), total_steps)
            val_loss = self.evaluate(val_batches()) if val_batches is not None else train_loss
            self._end_epoch(train_loss, val_loss, time.perf_counter() - started)
            log(f"epoch {self.epoch}/{s.epochs}: train {train_loss:.4f}  val {val_loss:.4f}  lr {self.optimizer.param_groups[0]['lr']:.2e}")
        self.save_history()
        return self.history

    def _diverged(self, what: str) -> None:
        kept = f"the checkpoint of epoch {self.epoch} in {self.out_dir} is kept" if self.epoch else "nothing was saved"
        raise TrainingDiverged(f"adaptation diverged: {what}; lower adapt.lr (now {self.settings.lr:g}) or keep "
                               f"adapt.grad_clip on ({kept})")

    def _train_epoch(self, batches: Iterable[dict], total_steps: int) -> float:
        self.model.train(True)
        s = self.settings
        losses = []
        self.optimizer.zero_grad(set_to_none=True)
        for micro, batch in enumerate(batches, start=1):
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = self.model.training_loss(_to_device(batch, self.device))
            if not torch.isfinite(loss):
                self._diverged(f"the training loss is {float(loss.detach())} at step {self.step} (epoch {self.epoch})")
            self.scaler.scale(loss / s.grad_accum).backward()
            losses.append(float(loss.detach()))
            if micro % s.grad_accum == 0:
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
    def evaluate(self, batches: Iterable[dict]) -> float:
        self.model.train(False)
        total, count = 0.0, 0
        for batch in batches:
            with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
                loss = self.model.training_loss(_to_device(batch, self.device))
            if not torch.isfinite(loss):  # else no epoch would ever improve, and nothing be saved
                self._diverged(f"the validation loss is {float(loss)} after epoch {self.epoch + 1}")
            size = _batch_size(batch)
            total += float(loss) * size
            count += size
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
        self.save_checkpoint()
        if improved:
            write_torch({"model": self.model.adapted_state(), "epoch": self.epoch - 1, "val_loss": val_loss},
                        self.files.best)

    # -- persistence ----------------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        write_torch(
            {
                "model": self.model.adapted_state(),
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(),
                "step": self.step,
                "epoch": self.epoch,
                "history": asdict(self.history),
                "settings": self.settings.model_dump(),
                "rng": _rng_state(),
            },
            self.files.checkpoint,
        )

    def resume(self) -> bool:
        path = self.files.checkpoint
        if not path.is_file():
            return False
        state = read_torch(path, "an adaptation checkpoint")
        self.model.load_adapted_state(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        self.step, self.epoch = state["step"], state["epoch"]
        self.history = History(**state["history"])
        _set_rng_state(state["rng"])
        return True

    def save_history(self) -> None:
        write_json(asdict(self.history), self.files.history)
        plot_history(self.history, self.files.history_plot)


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


def _to_device(batch: dict, device: torch.device) -> dict:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _batch_size(batch: dict) -> int:
    return next(len(v) for v in batch.values() if isinstance(v, torch.Tensor))


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict:
    # numpy's state as plain values, so that the checkpoint loads without unpickling numpy objects
    kind, keys, position, has_gauss, cached = np.random.get_state()
    numpy_state = (kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached)
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])

"""The shared trainer on a small real regression problem (no mocks: a linear model is an Adaptable).
Several processes: tests/e2e/test_ddp.py."""

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from fmb.config import AdaptSettings
from fmb.errors import FmbError
from fmb.io import read_torch, write_torch
from fmb.layout import ModelFiles
from fmb.models.trainer import Trainer, TrainingDiverged


class LinearProblem(torch.nn.Module):
    """y = X w + noise; the loss is the MSE of a linear layer."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def trainable_parameters(self):
        return list(self.parameters())

    def training_loss(self, batch):
        return torch.nn.functional.mse_loss(self.layer(batch["x"]).squeeze(-1), batch["y"])

    def adapted_state(self):
        return {k: v.clone() for k, v in self.state_dict().items()}

    def load_adapted_state(self, state):
        self.load_state_dict(state, strict=True)


def data(n=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5, 3.0]) + 0.01 * torch.randn(n, generator=g)
    return x, y


def batches(x, y, size):
    def epoch_batches(epoch):
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(epoch))
        return [{"x": x[order[i:i + size]], "y": y[order[i:i + size]]} for i in range(0, len(x), size)]
    return epoch_batches


class Killed(Exception):
    pass


def run(out: Path, epochs: int, size=8, kill_at_epoch=None, model_class=LinearProblem, **settings):
    torch.manual_seed(0)
    model = model_class()
    x, y = data()
    vx, vy = data(32, seed=1)
    trainer = Trainer(model, AdaptSettings(epochs=epochs, lr=0.1, **settings), out, seed=3)
    epoch_batches = batches(x, y, size)

    def train_batches(epoch):
        if epoch == kill_at_epoch:
            raise Killed
        return epoch_batches(epoch)

    steps = len(x) // size // settings.get("grad_accum", 1)
    history = trainer.fit(train_batches, lambda: [{"x": vx, "y": vy}], steps_per_epoch=steps, log=lambda _: None)
    return model, history, trainer


def test_training_reduces_validation_loss_and_writes_history(tmp_path):
    model, history, trainer = run(tmp_path, epochs=8)
    files = ModelFiles(tmp_path)
    assert trainer.files == files
    losses = [e["val_loss"] for e in history.epochs]
    assert losses[-1] < 0.01 * losses[0], losses
    saved = json.loads(files.history.read_text())
    assert [e["val_loss"] for e in saved["epochs"]] == pytest.approx(losses)
    assert files.history_plot.stat().st_size > 5000 and files.best.is_file()


def test_schedule_warms_up_then_decays_by_cosine(tmp_path):
    _, history, trainer = run(tmp_path, epochs=4, warmup_fraction=0.25)
    lrs = [s["lr"] for s in history.steps]
    total = len(lrs)
    warm = round(0.25 * total)
    assert lrs[0] == pytest.approx(0.1 / warm)  # the first step is not at full rate
    assert lrs[warm - 1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(lrs[warm - 1:], lrs[warm:]))
    assert trainer.lr_at(total, total) == pytest.approx(0.1 * 0.1)


def test_gradient_accumulation_matches_the_large_batch(tmp_path):
    big, _, _ = run(tmp_path / "a", epochs=2, size=16, grad_clip=0)
    accumulated, _, _ = run(tmp_path / "b", epochs=2, size=8, grad_accum=2, grad_clip=0)
    # same samples per optimiser step only if the 8-batches pair up into the 16-batches: they do,
    # because both use the same per-epoch permutation
    for p, q in zip(big.parameters(), accumulated.parameters()):
        assert torch.allclose(p, q, atol=1e-5)


def test_resume_after_a_stop_equals_an_uninterrupted_run(tmp_path):
    straight, _, _ = run(tmp_path / "straight", epochs=5)
    with pytest.raises(Killed):
        run(tmp_path / "split", epochs=5, kill_at_epoch=2)
    assert ModelFiles(tmp_path / "split").checkpoint.is_file()
    resumed, history, _ = run(tmp_path / "split", epochs=5)
    assert [e["epoch"] for e in history.epochs] == [0, 1, 2, 3, 4]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


def test_early_stopping_when_validation_stalls(tmp_path):
    model = LinearProblem()
    x, y = data()
    noise = {"x": torch.randn(32, 4), "y": torch.randn(32) * 100}  # unlearnable validation set
    trainer = Trainer(model, AdaptSettings(epochs=50, lr=0.05, patience=2, min_delta=1e9), tmp_path)
    history = trainer.fit(batches(x, y, 8), lambda: [noise], steps_per_epoch=8, log=lambda _: None)
    assert history.stopped_early and len(history.epochs) == 3


def test_non_finite_loss_is_an_error(tmp_path):
    model = LinearProblem()
    bad = [{"x": torch.full((4, 4), math.nan), "y": torch.zeros(4)}]
    with pytest.raises(TrainingDiverged, match=r"adaptation diverged: the training loss is nan at step 0 .*lower adapt.lr"):
        Trainer(model, AdaptSettings(epochs=1), tmp_path).fit(lambda e: bad, None, steps_per_epoch=1, log=lambda _: None)


class Observed(LinearProblem):
    """Records, in each training step, whether autocast is on and the dtype the layer computes in."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def training_loss(self, batch):
        out = self.layer(batch["x"])
        self.seen.add((torch.is_autocast_enabled("cpu"), out.dtype))
        return torch.nn.functional.mse_loss(out.squeeze(-1).float(), batch["y"])


@pytest.mark.parametrize("amp, dtype", [("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32),
                                        ("off", torch.float32), ("auto", torch.float32)])  # auto: fp32 on CPU
def test_the_selected_autocast_dtype_is_the_one_computed_in(tmp_path, amp, dtype):
    model, history, trainer = run(tmp_path, epochs=4, model_class=Observed, amp=amp)
    assert model.seen == {(dtype != torch.float32, dtype)}
    assert trainer.scaler.is_enabled() is (amp == "fp16")  # fp16 only: the gradient scaler
    losses = [e["val_loss"] for e in history.epochs]
    assert all(math.isfinite(loss) for loss in losses) and losses[-1] < 0.5 * losses[0]
    scaler = read_torch(ModelFiles(tmp_path).checkpoint, "checkpoint")["scaler"]
    # fp16: the first steps overflowed at the initial scale 2^16, were skipped and the scale lowered
    assert (scaler["scale"] < 2.0 ** 16) if amp == "fp16" else scaler == {}


class Blocks(LinearProblem):
    """Two tanh blocks before the linear read-out; each block counts its forward passes in training."""

    def __init__(self):
        super().__init__()
        self.blocks = torch.nn.ModuleList(Counted(4, 4) for _ in range(2))

    def training_loss(self, batch):
        hidden = batch["x"]
        for block in self.blocks:
            hidden = torch.tanh(block(hidden))
        return torch.nn.functional.mse_loss(self.layer(hidden).squeeze(-1), batch["y"])

    def gradient_checkpoint_blocks(self):
        return list(self.blocks)


class Counted(torch.nn.Linear):
    calls = 0

    def forward(self, x):
        if self.training:
            self.calls += 1
        return super().forward(x)


def test_gradient_checkpointing_recomputes_the_blocks_and_changes_nothing(tmp_path):
    kept, _, _ = run(tmp_path / "kept", epochs=2, model_class=Blocks)
    recomputed, _, _ = run(tmp_path / "recomputed", epochs=2, model_class=Blocks, gradient_checkpointing=True)
    assert [b.calls for b in recomputed.blocks] == [2 * b.calls for b in kept.blocks] and kept.blocks[0].calls > 0
    for p, q in zip(kept.parameters(), recomputed.parameters()):
        assert torch.equal(p, q)
    assert not any("forward" in vars(block) for block in recomputed.blocks)  # the model is left as it was


def test_gradient_checkpointing_of_a_model_without_blocks_is_a_clear_error(tmp_path):
    with pytest.raises(FmbError, match=r"adapt.gradient_checkpointing is on, but LinearProblem names no blocks"):
        run(tmp_path, epochs=1, gradient_checkpointing=True)


def test_a_checkpoint_of_the_earlier_format_resumes(tmp_path):
    """Format 1 (before several processes): no format or world size, the one process's RNG states."""
    straight, _, _ = run(tmp_path / "straight", epochs=4)
    with pytest.raises(Killed):
        run(tmp_path / "old", epochs=4, kill_at_epoch=2)
    path = ModelFiles(tmp_path / "old").checkpoint
    state = read_torch(path, "checkpoint")
    del state["format"], state["world_size"]
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state["rng"] = {"python": random.getstate(), "numpy": (kind, torch.from_numpy(keys.astype(np.int64)), position,
                                                            has_gauss, cached), "torch": torch.get_rng_state()}
    write_torch(state, path)
    resumed, history, _ = run(tmp_path / "old", epochs=4)
    assert [e["epoch"] for e in history.epochs] == [0, 1, 2, 3]
    for p, q in zip(straight.parameters(), resumed.parameters()):
        assert torch.equal(p, q)

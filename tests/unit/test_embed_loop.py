"""The loop around the model in `fmb embed` (`fmb.embed.extract`): a batch that runs out of memory is
split and the smaller size kept, never a crash; the GPU batch-size probe's arithmetic; channels_last
leaves the weights and the embeddings as they were; the progress line reports the share of time
spent waiting for data; the model computes on every core beside its DataLoader workers, in
embedding and in adaptation (which keeps images and convolutions in channels_last too), and the `fmb`
command makes OpenMP's idle threads sleep so the workers do not stall it."""

import io
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fmb.config import load_config
from fmb.data.tasks import index
from fmb.data.validate import RowChecker
from fmb.embed import extract, store
from fmb.embed.extract import Embedder, fitting_batch_size
from fmb.errors import FmbError
from fmb.models.aion import AionEncoder, AionSection
from fmb.models.astroclip import AstroCLIPEncoder, AstroCLIPSection
from fmb.models.base import state_sha256
from tests.conftest import tagged_row, write_rows

CPU = torch.device("cpu")


def batch_of(encoder, n: int) -> dict:
    checker = RowChecker()
    return encoder.preprocessor([checker.check(tagged_row(300 + i, size=40, seed=i))[0] for i in range(n)])


def memory_of(encoder, most: int):
    """Make `encoder.embed` fail as an exhausted allocator does for batches above `most` objects: a
    real out-of-memory cannot be provoked safely on a shared CPU (and there is no GPU here)."""
    embed = encoder.embed
    seen = []

    def limited(batch):
        seen.append(len(batch["object_id"]))
        if len(batch["object_id"]) > most:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return embed(batch)

    encoder.embed = limited
    return seen


def test_a_batch_that_runs_out_of_memory_is_halved_and_gives_the_same_embeddings():
    encoder = AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny")).eval()
    batch = batch_of(encoder, 7)
    whole = Embedder(encoder, CPU, None)(batch)
    seen = memory_of(encoder, 3)
    embedder = Embedder(encoder, CPU, None)
    pieces = embedder(batch)
    assert embedder.size == 3 and seen[:2] == [7, 3]  # 7 failed, then pieces of 3 (7 -> 3 -> 3, 3, 1)
    assert max(seen[1:]) <= 3 and sum(seen[1:]) == 7
    for key in whole:
        np.testing.assert_allclose(pieces[key], whole[key], rtol=1e-5, atol=1e-6)
    embedder(batch)  # the smaller size is kept: no failing attempt at 7 again
    assert seen[len(seen) - 3:] == [3, 3, 1] and 7 not in seen[1:]


def test_one_object_that_does_not_fit_is_a_one_line_error():
    encoder = AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny")).eval()
    memory_of(encoder, 0)
    with pytest.raises(FmbError, match="one object does not fit"):
        Embedder(encoder, CPU, None)(batch_of(encoder, 2))


def test_other_runtime_errors_are_not_taken_for_out_of_memory():
    encoder = AstroCLIPEncoder.load(AstroCLIPSection(preset="tiny")).eval()
    encoder.embed = lambda batch: (_ for _ in ()).throw(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))
    with pytest.raises(RuntimeError, match="shapes"):
        Embedder(encoder, CPU, None)(batch_of(encoder, 2))


def test_the_probe_takes_the_largest_power_of_two_that_fits():
    gib = 2**30
    assert fitting_batch_size(10 * gib, 0.1 * gib, largest=1024) == 64  # 80 fit in 80 % of 10 GiB
    assert fitting_batch_size(10 * gib, 0.1 * gib, largest=32) == 32
    assert fitting_batch_size(gib, 2 * gib, largest=32) == 1  # never below one object


def test_channels_last_changes_neither_the_weights_nor_the_embeddings():
    encoder = AionEncoder.load(AionSection(preset="tiny")).eval()
    batch = batch_of(encoder, 3)
    before, plain = state_sha256(encoder.state_dict()), Embedder(encoder, CPU, None)(batch)
    extract._prepare(encoder, CPU)
    assert encoder.euclid_to_hsc.inc[0].weight.is_contiguous(memory_format=torch.channels_last)
    assert state_sha256(encoder.state_dict()) == before  # the embedding manifest's weights hash
    prepared = Embedder(encoder, CPU, None)(batch)
    for key in plain:
        np.testing.assert_allclose(prepared[key], plain[key], rtol=1e-4, atol=1e-5)


def test_the_progress_line_shows_the_rate_and_the_time_waiting_for_data(project, monkeypatch):
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(700 + i, size=40, seed=i) for i in range(6)])
    config = load_config(root=project, sets=["data.source=survey", "models.astroclip.preset=tiny",
                                             "models.astroclip.embed.batch_size=2", "models.astroclip.embed.num_workers=0"])
    index(config)
    out = io.StringIO()
    original = extract.progress_bar
    monkeypatch.setattr(extract, "progress_bar", lambda *a, **k: original(*a, **k, stream=out, interval_s=0))
    extract.embed(config, "astroclip")
    last = out.getvalue().strip().splitlines()[-1]
    assert "6/6 objects" in last and "objects/s" in last and "waiting for data" in last and "% of the time" in last
    ids, _ = store.load_embeddings(config.layout.embeddings("astroclip").dir)
    assert len(ids) == 6


def astroclip_project(project, n: int, sets: list[str]):
    """An indexed tiny-AstroCLIP project of `n` objects."""
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(800 + i, size=40, seed=i) for i in range(n)])
    config = load_config(root=project, sets=["data.source=survey", "models.astroclip.preset=tiny", *sets])
    index(config)
    return config


def test_embedding_runs_on_every_core_beside_its_workers(project, monkeypatch):
    config = astroclip_project(project, 4, ["models.astroclip.embed.num_workers=1"])
    seen = []
    embed = AstroCLIPEncoder.embed
    monkeypatch.setattr(AstroCLIPEncoder, "embed", lambda self, batch: seen.append(torch.get_num_threads()) or embed(self, batch))
    before = torch.get_num_threads()
    extract.embed(config, "astroclip")
    assert seen and set(seen) == {before}  # every core: the workers do not take threads from the model
    assert torch.get_num_threads() == before


def test_adaptation_runs_on_every_core_beside_its_workers_and_images_in_channels_last(project, monkeypatch):
    from fmb.models import tasks

    config = astroclip_project(project, 12, [
        "models.astroclip.adapt.epochs=1", "models.astroclip.adapt.batch_size=4", "models.astroclip.adapt.num_workers=1"])
    seen = []
    loss = AstroCLIPEncoder.training_loss

    def recorded(self, batch):
        seen.append((torch.get_num_threads(), batch["image"].is_contiguous(memory_format=torch.channels_last),
                     self.image_encoder.backbone.patch_embed.proj.weight.is_contiguous(memory_format=torch.channels_last)))
        return loss(self, batch)

    monkeypatch.setattr(AstroCLIPEncoder, "training_loss", recorded)
    before = torch.get_num_threads()
    tasks.adapt(config, "astroclip", log=lambda _: None)
    assert seen and set(seen) == {(before, True, True)}
    assert torch.get_num_threads() == before


def test_the_fmb_command_makes_idle_openmp_threads_sleep_and_keeps_the_users_policy(tmp_path):
    # the policy is read when torch loads, so it is checked in a fresh process through the real entry point
    probe = ("import os, sys; sys.argv = ['fmb', '--version']; from fmb.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\nprint('policy', os.environ['OMP_WAIT_POLICY'])")
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    default = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, check=True)
    assert "policy PASSIVE" in default.stdout
    chosen = subprocess.run([sys.executable, "-c", probe], env={**env, "OMP_WAIT_POLICY": "ACTIVE"},
                            capture_output=True, text=True, check=True)
    assert "policy ACTIVE" in chosen.stdout

"""Opening a file never runs code: malicious pickles handed to fmb's loaders through the CLI."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from fmb.cli import app
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.io import read_torch
from fmb.models.registry import build_encoder
from fmb.models.trainer import _rng_state, _set_rng_state

runner = CliRunner()


class WritesAFile:
    """Unpickling this calls os.system, which would create `marker`: the test's proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    torch.save(wrap(WritesAFile(marker)), path)
    return path


def test_import_pt_refuses_a_pickle_that_would_run_code(project: Path, monkeypatch):
    marker = project / "code-ran"
    evil = malicious(project / "evil.pt", marker, wrap=lambda payload: [{"object_id": 1, "embedding_images": payload}])
    monkeypatch.chdir(project)
    result = runner.invoke(app, ["embed", "pixels", "--import-pt", str(evil)])
    assert result.exit_code != 0
    assert not marker.exists()
    assert "refusing to load it as an embedding file" in result.output and "evil.pt" in result.output
    assert "Traceback" not in result.output


def test_adapted_weights_and_checkpoints_are_loaded_without_running_code(project: Path):
    """The two files fmb writes for a model and reads back: adapted weights (read when embedding)
    and the adaptation checkpoint (read when resuming). Planted by someone else, they refuse."""
    config = load_config(root=project)
    files = config.layout.model("pixels")
    files.dir.mkdir(parents=True)
    marker = project / "code-ran"
    malicious(files.best, marker, wrap=lambda payload: {"model": payload})
    with pytest.raises(FmbError, match="refusing to load it as adapted pixels weights"):
        build_encoder(config, "pixels")
    assert not marker.exists()


def test_the_checkpoint_rng_state_is_plain_values_and_round_trips(tmp_path: Path):
    np.random.seed(3)
    state = _rng_state()
    torch.save(state, tmp_path / "state.pt")
    expected = np.random.random(3)
    _set_rng_state(read_torch(tmp_path / "state.pt", "a checkpoint"))  # weights_only: no numpy objects inside
    np.testing.assert_array_equal(np.random.random(3), expected)

"""Opening a file never runs code: malicious pickles handed to fmb's loaders through the CLI."""

import os
import sys
from pathlib import Path

import pytest
import torch

from fmb.cli import main
from fmb.config import load_config
from fmb.errors import FmbError
from fmb.models.registry import build_encoder


def fmb(project: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """The real entry point (`fmb.cli.main`, as the `fmb` script runs it): (exit code, console text)."""
    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["fmb", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    captured = capsys.readouterr()
    return exit_.value.code, captured.out + captured.err


class WritesAFile:
    """Unpickling this calls os.system, which would create `marker`: the test's proof that code ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def malicious(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    torch.save(wrap(WritesAFile(marker)), path)
    return path


def test_import_pt_refuses_a_pickle_that_would_run_code(project: Path, monkeypatch, capsys):
    marker = project / "code-ran"
    evil = malicious(project / "evil.pt", marker, wrap=lambda payload: [{"object_id": 1, "embedding_images": payload}])
    code, output = fmb(project, monkeypatch, capsys, "embed", "pixels", "--import-pt", str(evil))
    assert code != 0 and not marker.exists()
    assert "refusing to load it as an embedding file" in output and "evil.pt" in output and "posix.system" in output
    assert "Traceback" not in output


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


def test_detect_score_refuses_planted_detectors(project: Path, monkeypatch, capsys):
    config = load_config(root=project)
    saved = config.layout.scores.detectors("pixels")
    saved.parent.mkdir(parents=True)
    marker = project / "code-ran"
    malicious(saved, marker)
    (project / "new").mkdir()
    code, output = fmb(project, monkeypatch, capsys, "detect", "score", "pixels", "--embeddings", "new",
                       "--out", "new.parquet")
    assert code == 2 and not marker.exists()
    assert "error:" in output and "refusing to load it as saved detectors" in output and "Traceback" not in output


def test_astroclip_checkpoint_reader_never_calls_what_a_file_names(tmp_path: Path):
    """A Lightning-style checkpoint whose hyper-parameters hold a payload: the tensors are read, the
    payload is a stub, nothing ran."""
    from fmb.models.astroclip import read_checkpoint

    marker = tmp_path / "code-ran"
    path = tmp_path / "planted.ckpt"
    torch.save({"state_dict": {"image_encoder.weight": torch.ones(2, 2)}, "hyper_parameters": WritesAFile(marker)},
               path)
    checkpoint = read_checkpoint(str(path))
    assert not marker.exists()
    assert torch.equal(checkpoint["state_dict"]["image_encoder.weight"], torch.ones(2, 2))

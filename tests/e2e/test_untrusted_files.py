"""Opening a file never runs code: malicious pickles handed to fmb's loaders through the CLI."""

import os
import re
from pathlib import Path

import pytest
import torch

from fmb.config import load_config
from fmb.errors import FmbError
from fmb.models.registry import build_encoder
from tests.conftest import fmb_said as fmb


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


# -- issue 27: every file fmb reads back is checked, and what a command is given is checked ----------
RUN = ["--run", "pipeline"]


def run_layout(project: Path):
    from fmb.layout import RunLayout

    return RunLayout.of(project, "pipeline")


def test_an_overwritten_embedding_part_is_named_listed_and_redone_alone(pipeline_copy: Path, monkeypatch, capsys):
    """3,000 bytes overwritten inside a part, its footer intact: reading it is refused naming it, the
    dry run lists it, `fmb embed` (no --force) redoes exactly that part, `fmb verify` then passes."""
    import hashlib

    files = run_layout(pipeline_copy).embeddings("pixels")
    parts = files.parts()
    damaged = parts[1]
    kept = {part: part.read_bytes() for part in parts if part != damaged}
    recorded = __import__("json").loads(files.manifest.read_text())["parts"]["1"]["sha256"]
    data = bytearray(damaged.read_bytes())
    data[8:3008] = bytes(3000)
    damaged.write_bytes(bytes(data))

    code, output = fmb(pipeline_copy, monkeypatch, capsys, "detect", "score", "pixels", "--embeddings", str(files.dir),
                       "--out", "new.parquet", *RUN)
    assert code == 2 and f"{damaged.name} does not match the sha256 its manifest records" in output
    assert "fmb embed pixels" in output and not (pipeline_copy / "new.parquet").exists()
    code, output = fmb(pipeline_copy, monkeypatch, capsys, "run", "--dry-run", *RUN)
    assert code == 0 and "redoes what fails its check" in output and damaged.name in output
    code, output = fmb(pipeline_copy, monkeypatch, capsys, "verify", *RUN)
    assert code == 2 and "1 damaged embedding part(s)" in output and damaged.name in output
    code, output = fmb(pipeline_copy, monkeypatch, capsys, "embed", "pixels", *RUN)
    assert code == 0 and "(1 of 3 parts written now" in output, output
    assert {part: part.read_bytes() for part in kept} == kept
    assert hashlib.sha256(damaged.read_bytes()).hexdigest() == recorded  # the same embeddings again
    code, output = fmb(pipeline_copy, monkeypatch, capsys, "verify", *RUN)
    assert code == 0 and "every embedding part matches its manifest" in output


def test_a_truncated_part_is_redone_by_the_next_embed_without_force(pipeline_copy: Path, monkeypatch, capsys):
    part = run_layout(pipeline_copy).embeddings("pixels").part(0)
    part.write_bytes(part.read_bytes()[:500])
    code, output = fmb(pipeline_copy, monkeypatch, capsys, "embed", "pixels", *RUN)
    assert code == 0 and "(1 of 3 parts written now" in output, output


def _embeddings(directory: Path, signature: dict, width: int = 8) -> Path:
    import numpy as np

    from fmb.embed.store import write_embeddings

    vectors = np.random.default_rng(0).normal(size=(20, width)).astype(np.float32)
    write_embeddings(directory, signature, np.arange(20), {"image": vectors, "spectrum": vectors})
    return directory


def test_detect_score_checks_what_it_is_given(pipeline_copy: Path, monkeypatch, capsys):
    run = run_layout(pipeline_copy)
    table = run.scores.table("pixels").read_bytes()

    def score(embeddings: Path, out: str = "new.parquet") -> str:
        code, output = fmb(pipeline_copy, monkeypatch, capsys, "detect", "score", "pixels", "--embeddings",
                           str(embeddings), "--out", out, *RUN)
        assert code == 2 and "Traceback" not in output and len(output.strip().splitlines()) == 1, output
        return output

    assert "holds embeddings of astroclip (its manifest says so), not pixels" in score(run.embeddings("astroclip").dir)
    other = _embeddings(pipeline_copy / "other", {"model": "pixels", "weights_sha256": "0" * 64})
    assert "made with other pixels weights" in score(other)
    narrow = _embeddings(pipeline_copy / "narrow", {"model": "pixels"}, width=5)
    assert "the image embeddings are 5 wide, the pixels detectors were fitted on 8" in score(narrow)
    assert "inside the runs' own outputs" in score(run.embeddings("pixels").dir, str(run.scores.table("pixels")))
    assert run.scores.table("pixels").read_bytes() == table


def test_an_import_is_applied_or_says_why_not(pipeline_copy: Path, monkeypatch, capsys):
    from fmb.embed.store import export_pt

    export_pt(run_layout(pipeline_copy).embeddings("astroclip").dir, pipeline_copy / "valid.pt")
    imported = ["import", "embeddings", "valid.pt", "--model", "astroclip", *RUN]
    code, output = fmb(pipeline_copy, monkeypatch, capsys, *imported)
    assert code == 0 and re.search(r"imported \d+ objects", output), output
    code, output = fmb(pipeline_copy, monkeypatch, capsys, *imported)
    assert code == 0 and "already holds the embeddings imported from valid.pt (same content)" in output
    assert "--force imports it again" in output
    code, output = fmb(pipeline_copy, monkeypatch, capsys, *imported, "--force")
    assert code == 0 and re.search(r"imported \d+ objects", output), output
    (pipeline_copy / "garbage.pt").write_bytes(b"plain bytes, not a pickle" * 10)
    code, output = fmb(pipeline_copy, monkeypatch, capsys, "import", "embeddings", "garbage.pt", "--model",
                       "astroclip", "--force", *RUN)
    assert code == 2 and "not a readable" in output and "could run code" not in output

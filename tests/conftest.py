"""Shared fixtures: small contract rows whose image and spectrum both encode their object id,
so any mis-pairing downstream is detectable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fmb.data.schema import SPECTRUM_LENGTH, make_row, rows_to_table
from fmb.io import write_table

CUTOUT = 24


def tagged_row(object_id: int, size: int = CUTOUT, seed: int = 0) -> dict:
    """A valid row; every band pixel mean and the spectrum median equal `object_id % 1000`."""
    rng = np.random.default_rng([seed, object_id])
    tag = float(object_id % 1000)
    bands = tag + rng.normal(0, 0.01, size=(4, size, size))
    flux = tag + rng.normal(0, 0.01, size=SPECTRUM_LENGTH)
    return make_row(object_id=object_id, bands=bands, flux=flux, error=np.full(SPECTRUM_LENGTH, 0.1), redshift=0.1)


def row_tag(sample) -> tuple[float, float]:
    """(image tag, spectrum tag) of a checked sample built from `tagged_row`."""
    return round(float(sample.bands.mean())), round(float(np.median(sample.spectrum.flux)))


def write_rows(path: Path, rows: list[dict], row_group_size: int = 4) -> Path:
    return write_table(rows_to_table(rows), path, row_group_size=row_group_size)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """An empty project root (holds fmb.yaml, so config paths resolve here)."""
    (tmp_path / "fmb.yaml").write_text("name: test\n")
    return tmp_path


def plant_hf_file(hf_home: Path, repo_id: str, filename: str, write, commit: str = "0" * 40) -> Path:
    """Put a file into a Hugging Face hub cache exactly where `hf_hub_download` looks for it.

    The hub is unreachable from tests: with HF_HUB_OFFLINE=1 the real loading code then reads this
    planted copy through its normal path. `write(path)` creates the file, in the snapshot of
    `commit`, which `main` then points to (as after a push).
    """
    repo = hf_home / "hub" / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    target = snapshot / filename
    target.parent.mkdir(parents=True, exist_ok=True)
    write(target)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    return target


@pytest.fixture
def offline_hub(tmp_path: Path, monkeypatch) -> Path:
    """An empty HF cache in offline mode (the hub cannot be reached from here)."""
    home = tmp_path / "hf_home"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    return home


# -- the one pipeline run the end-to-end tests share ---------------------------------------------------
#: Like the demo (configs/tasks/demo.yaml + configs/adapt/tiny.yaml), smaller: a synthetic survey through
#: every stage of `fmb run` with the pixel reference and a tiny random-weight AstroCLIP. Two models, one
#: of them aligned, so the detect merge computes the critic's agreement and the cross-model consensus.
PIPELINE_TASK = """\
name: pipeline
seed: 7
synth: {n: 240, out: data/pipeline, anomaly_rate: 0.05, workers: 1}
data: {source: data/pipeline}
run: {synth: true, models: [pixels, astroclip]}
detect:
  folds: 2
  pca_components: 8
  flow: {hidden: 16, min_steps: 40, max_steps: 40}
  mismatch: {min_steps: 40, max_steps: 40}
analyze:
  probes: {folds: 2, bootstraps: 5}
  figures: {umap_neighbors: 5}
  similarity: {n_examples: 1}
models:
  pixels: {components: 8, image_size: 8, embed: {num_workers: 0, rows_per_shard: 100}, adapt: {num_workers: 0}}
  astroclip:
    preset: tiny
    adapt: {epochs: 1, max_objects: 120, batch_size: 32, num_workers: 0}
    embed: {batch_size: 64, num_workers: 0, rows_per_shard: 100}
"""


def run_cli(project: Path, *args: str):
    """`fmb <args>` through the real entry point's app, in `project`; returns typer's result."""
    import os

    from typer.testing import CliRunner

    from fmb.cli import app

    cwd = os.getcwd()
    os.chdir(project)
    try:
        return CliRunner().invoke(app, list(args))
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Path:
    """The project directory of one finished `fmb run` (run `pipeline`), made as `make demo` makes
    its run: from a task file, with no project file, so every later command finds its settings in
    the run itself. Read-only for the tests: one that changes it works on `pipeline_copy`."""
    project = tmp_path_factory.mktemp("pipeline")
    (project / "pipeline.yaml").write_text(PIPELINE_TASK)
    result = run_cli(project, "run", "--config", "pipeline.yaml")
    assert result.exit_code == 0, result.output
    return project


@pytest.fixture
def pipeline_copy(pipeline: Path, tmp_path: Path) -> Path:
    """A copy of the shared pipeline project for a test that changes it."""
    import shutil

    return Path(shutil.copytree(pipeline, tmp_path / "project", symlinks=True))


def fmb_main(project: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """(exit code, what the user saw on stderr) of `fmb ARGS` through the real entry point
    (`fmb.cli.main`, which turns every failure into one line) run in `project`."""
    return _exit_code(project, monkeypatch, args), capsys.readouterr().err


def fmb_said(project: Path, monkeypatch, capsys, *args: str) -> tuple[int, str]:
    """(exit code, all the user saw: stdout then stderr) of `fmb ARGS`, as `fmb_main` runs it."""
    code = _exit_code(project, monkeypatch, args)
    said = capsys.readouterr()
    return code, said.out + said.err


def _exit_code(project: Path, monkeypatch, args) -> int:
    import sys

    from fmb.cli import main

    monkeypatch.chdir(project)
    monkeypatch.setattr(sys, "argv", ["fmb", *args])
    with pytest.raises(SystemExit) as exit_:
        main()
    return exit_.value.code


#: Fixtures that build or copy a whole run: a test that uses one is slow whatever directory it is in.
RUN_FIXTURES = {"pipeline", "pipeline_copy", "scored_run"}


def pytest_collection_modifyitems(items) -> None:
    """`slow` marks every test that starts processes or builds a run (all of tests/e2e, and any test
    using a run fixture), so `make test-fast` (-m "not slow") leaves exactly those out."""
    for item in items:
        if "e2e" in item.path.parts or RUN_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)

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

"""`fmb setup download` / `fmb setup check` on real code paths, with no network: the hub is never
reached (HF_HUB_OFFLINE=1); a temporary Hugging Face cache is planted with tiny weights of the three
models (saved in their released layouts by the models' own tests' helpers) and a tiny copy of the
dataset, both as the hub client and an online `load_dataset` leave them. `download` then resolves
everything from that cache through the same calls it makes online, which tests the lock it writes;
`check` verifies that cache against the lock and loads every model through fmb's loader."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from fmb.cli.setup import setup_app
from fmb.config import DEFAULT_HF_DATASET
from fmb.errors import ConfigError, FmbError
from fmb.layout import lock_file
from fmb.models.aion import DEFAULT_WEIGHTS as AION_REPO, AionEncoder, AionSection
from fmb.models.astroclip import CHECKPOINT_FILES, AstroCLIPEncoder, AstroCLIPSection
from fmb.models.astropt import DEFAULT_WEIGHTS as ASTROPT_WEIGHTS, AstroPTEncoder, AstroPTSection
from fmb.models.base import file_sha256
from tests.conftest import plant_hf_file, tagged_row, write_rows
from tests.unit.test_aion import plant as plant_aion
from tests.unit.test_astroclip import perturbed_tiny, upstream_state
from tests.unit.test_astropt import plant_release as plant_astropt
from tests.unit.test_source_fingerprint import _plant_hf_dataset

A, B, P, C, D = "a" * 40, "b" * 40, "1" * 40, "2" * 40, "d" * 40
SETS = [f"data.source=hf:{DEFAULT_HF_DATASET}", "models.astroclip.preset=tiny",
        "models.astroclip.weights=polymathic-ai/astroclip"]
runner = CliRunner()


def invoke(project: Path, monkeypatch, *args: str, sets=SETS):
    monkeypatch.chdir(project)
    return runner.invoke(setup_app, [*args, *(arg for s in sets for arg in ("--set", s))])


@pytest.fixture
def hub_cache(offline_hub: Path, monkeypatch) -> Path:
    """The offline, empty cache of `offline_hub`, for `datasets` too (it reads its settings at import)."""
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", offline_hub / "datasets")
    return offline_hub


def plant_dataset(hf_home: Path, build: Path, commit: str = D) -> dict[str, Path]:
    """The dataset's hub snapshot (data/<split>-*.parquet) and the Arrow cache an online
    `load_dataset(id, split, revision=commit)` prepares from it (which offline loads read)."""
    import datasets
    from datasets.naming import camelcase_to_snakecase
    from datasets.packaged_modules.parquet.parquet import Parquet

    snapshot = _plant_hf_dataset(hf_home, DEFAULT_HF_DATASET, commit) / "snapshots" / commit
    files = {f"data/{split}-00000-of-00001.parquet": [tagged_row(start + i) for i in range(n)]
             for split, start, n in (("train", 10, 6), ("test", 30, 3))}
    for name, rows in files.items():
        write_rows(snapshot / name, rows)
    owner, name = DEFAULT_HF_DATASET.split("/")
    builder = Parquet(cache_dir=str(build), dataset_name=name, config_id="default", hash=commit,
                      data_files={split: [str(snapshot / f"data/{split}-00000-of-00001.parquet")] for split in ("train", "test")})
    builder.download_and_prepare()
    prepared = Path(datasets.config.HF_DATASETS_CACHE) / f"{owner}___{camelcase_to_snakecase(name)}" / "default"
    shutil.copytree(builder.cache_dir, prepared / "0.0.0" / commit)
    return {name: snapshot / name for name in files}


def plant_everything(hf_home: Path, tmp_path: Path) -> None:
    plant_aion(hf_home, commit=A)
    plant_astropt(hf_home, P, seed=5)
    plant_hf_file(hf_home, "polymathic-ai/astroclip", "astroclip.ckpt",
                  lambda path: torch.save({"state_dict": upstream_state(perturbed_tiny())}, path), commit=C)
    plant_dataset(hf_home, tmp_path / "build")


def snapshot_file(hf_home: Path, repo_id: str, commit: str, filename: str) -> Path:
    return hf_hub_repo(hf_home, repo_id) / "snapshots" / commit / filename


def hf_hub_repo(hf_home: Path, repo_id: str, kind: str = "models") -> Path:
    return hf_home / "hub" / f"{kind}--{repo_id.replace('/', '--')}"


def lines(output: str) -> dict[str, list[str]]:
    """Report lines by item name (`<status> <name> <detail>`), the summary under ''."""
    by_name: dict[str, list[str]] = {}
    for line in output.splitlines():
        name = line[9:33].strip() if line.split(" ", 1)[0] in ("ok", "missing", "FAIL") else ""
        by_name.setdefault(name, []).append(line)
    return by_name


# -- what the models name ------------------------------------------------------------------------------
def test_the_models_name_their_released_hub_files_and_nothing_for_random_or_local_weights(tmp_path: Path):
    assert [tuple(f) for f in AionEncoder.hub_files(AionSection())] == [
        (AION_REPO, name) for name in ("config.json", "model.safetensors", "codecs/image/config.json",
                                       "codecs/image/model.safetensors", "codecs/spectrum/config.json",
                                       "codecs/spectrum/model.safetensors")]
    owner, repo, path = ASTROPT_WEIGHTS.split("/", 2)
    assert [tuple(f) for f in AstroPTEncoder.hub_files(AstroPTSection())] == [(f"{owner}/{repo}", path)]
    assert {tuple(f) for f in AstroCLIPEncoder.hub_files(AstroCLIPSection())} == set(CHECKPOINT_FILES.items())
    (tmp_path / "ckpt.pt").write_bytes(b"local")
    for cls, section in ((AionEncoder, AionSection), (AstroPTEncoder, AstroPTSection), (AstroCLIPEncoder, AstroCLIPSection)):
        assert cls.hub_files(section(preset="tiny")) == []  # random weights
    assert AstroPTEncoder.hub_files(AstroPTSection(weights=str(tmp_path / "ckpt.pt"))) == []
    assert AionEncoder.hub_files(AionSection(weights=str(tmp_path))) == []


# -- check on this machine -----------------------------------------------------------------------------
def test_check_here_reports_python_torch_no_gpu_packages_and_missing_weights_and_fails(project: Path, hub_cache, monkeypatch):
    result = invoke(project, monkeypatch, "check", "--min-free-gb", "0", sets=[])  # not the free space of this disk
    assert result.exit_code == 1, result.output
    found = lines(result.output)
    assert found["python"][0].startswith("ok") and "3.11." in found["python"][0]
    assert found["torch"][0].startswith("ok") and torch.__version__ in found["torch"][0]
    if not torch.cuda.is_available():
        assert found["gpu"][0].startswith("missing") and found["gpu"][0].endswith("[optional]")
    assert found["package torch"][0].startswith("ok") and found["package astropt"][0].startswith("ok")
    assert sum(name.startswith("package ") for name in found) > 25
    assert not any(line.startswith("FAIL") for line in result.output.splitlines()), result.output
    aion = found["weights aion"]
    assert len(aion) == 6 and all(line.startswith("missing") for line in aion)
    assert "codecs/image/model.safetensors at revision main is not in the Hugging Face cache" in "\n".join(aion)
    assert len(found["weights astroclip"]) == 3  # the three released checkpoints
    assert "load aion" not in found  # nothing to load
    assert found["load pixels"][0].startswith("ok")  # no hub weights: loads anyway
    assert found["data"][0].startswith("missing") and found["lock"][0].endswith("[optional]")
    assert found["disk"][0].startswith("ok")
    assert "not ready" in found[""][-1]


# -- download, lock, check -----------------------------------------------------------------------------
def test_download_locks_the_cache_and_check_then_passes_offline(project: Path, hub_cache, tmp_path: Path, monkeypatch):
    plant_everything(hub_cache, tmp_path)
    result = invoke(project, monkeypatch, "download")
    assert result.exit_code == 0, result.output
    lock = json.loads(lock_file(project).read_text())
    repos = {(r["repo_type"], r["repo_id"]): r for r in lock["repos"]}
    aion = repos["model", AION_REPO]
    assert aion["revision"] == A and aion["used_by"] == ["aion"] and len(aion["files"]) == 6
    for name, sha in aion["files"].items():
        assert sha == file_sha256(snapshot_file(hub_cache, AION_REPO, A, name)), name
    assert repos["model", "smith42/astropt_v2.0"]["revision"] == P
    assert list(repos["model", "polymathic-ai/astroclip"]["files"]) == ["astroclip.ckpt"]
    data = repos["dataset", DEFAULT_HF_DATASET]
    assert data["revision"] == D and sorted(data["files"]) == ["data/test-00000-of-00001.parquet",
                                                               "data/train-00000-of-00001.parquet"]
    assert f"aion: {AION_REPO}@{A}, 6 files" in result.output

    result = invoke(project, monkeypatch, "check", "--min-free-gb", "0")
    assert result.exit_code == 0, result.output
    found = lines(result.output)
    assert all("sha256 matches the lock" in line for line in found["weights aion"] + found["weights astroclip"])
    for model in ("aion", "astropt", "astroclip"):
        assert found[f"load {model}"][0].startswith("ok"), result.output
    assert f"@{A[:12]}" in found["load aion"][0]
    assert "2 files, sha256 match the lock" in found["data"][0]
    assert "6 objects, read offline" in found["data train"][0] and "3 objects" in found["data test"][0]
    assert result.output.splitlines()[-1].endswith("ready")


def test_a_changed_weight_file_fails_check_and_download_naming_it(project: Path, hub_cache, tmp_path: Path, monkeypatch):
    from safetensors.torch import load_file, save_file

    plant_everything(hub_cache, tmp_path)
    assert invoke(project, monkeypatch, "download", "--no-data").exit_code == 0
    changed = snapshot_file(hub_cache, AION_REPO, A, "codecs/image/model.safetensors")
    state = load_file(changed)
    first = next(iter(state))
    state[first] = state[first] + 1  # still loadable, different bytes
    save_file(state, changed)

    result = invoke(project, monkeypatch, "check", "--model", "aion", "--min-free-gb", "0")
    assert result.exit_code == 1
    failed = [line for line in result.output.splitlines() if line.startswith("FAIL")]
    assert len(failed) == 1 and "codecs/image/model.safetensors: sha256" in failed[0], result.output
    assert "differs from the lock" in failed[0] and "load aion" not in result.output
    result = invoke(project, monkeypatch, "download", "--model", "aion", "--no-data")
    assert isinstance(result.exception, FmbError) and "codecs/image/model.safetensors" in str(result.exception)
    assert "\n" not in str(result.exception)


def test_too_little_free_disk_fails_check_naming_the_option(project: Path, hub_cache, monkeypatch):
    result = invoke(project, monkeypatch, "check", "--model", "pixels", "--no-data", "--min-free-gb", "1e9")
    assert result.exit_code == 1
    disk = lines(result.output)["disk"][0]
    assert disk.startswith("FAIL") and "(needs 1e+09 GB, --min-free-gb)" in disk, disk


def test_the_lock_pins_commits_and_revision_overrides_relock(project: Path, hub_cache, monkeypatch):
    only_aion = ("--model", "aion", "--no-data")
    plant_aion(hub_cache, commit=A)
    assert invoke(project, monkeypatch, "download", *only_aion).exit_code == 0
    main = hf_hub_repo(hub_cache, AION_REPO) / "refs" / "main"
    main.unlink()  # a cache that fetched the locked commit by its sha has no main
    result = invoke(project, monkeypatch, "check", *only_aion)
    assert result.exit_code == 1 and f"holds the locked commit: set models.aion.revision={A}" in result.output
    plant_aion(hub_cache, commit=B, scale=2.0)  # a push upstream: main is now b

    result = invoke(project, monkeypatch, "check", "--model", "aion")  # a run would read main = b
    assert result.exit_code == 1 and f"is {B[:12]} in this cache but the lock pins {A[:12]}" in result.output
    assert invoke(project, monkeypatch, "download", *only_aion).exit_code == 0  # the lock's commit, not main
    assert json.loads(lock_file(project).read_text())["repos"][0]["revision"] == A
    pinned = invoke(project, monkeypatch, "check", *only_aion, "--min-free-gb", "0", sets=[f"models.aion.revision={A}"])
    assert pinned.exit_code == 0, pinned.output

    result = invoke(project, monkeypatch, "download", *only_aion, "--revision", "aion=main")
    assert result.exit_code == 0 and f"{AION_REPO}@{B}, 6 files (the lock had {A[:12]})" in result.output
    assert invoke(project, monkeypatch, "check", *only_aion, "--min-free-gb", "0").exit_code == 0
    moved = lock_file(project).rename(project / "elsewhere.json")
    result = invoke(project, monkeypatch, "check", *only_aion, "--lock", moved.name, "--min-free-gb", "0")
    assert result.exit_code == 0 and str(moved) in result.output


def test_bad_input_is_a_one_line_error(project: Path, hub_cache, monkeypatch):
    for revision, message in (("aion", "expects NAME=REVISION"), ("nosuch=main", "'nosuch' is not fetched here")):
        result = invoke(project, monkeypatch, "download", "--model", "aion", "--revision", revision)
        assert isinstance(result.exception, ConfigError) and message in str(result.exception)
    lock_file(project).write_text('{"version": 1, "repos": [{"repo_type": "model"}]}')
    result = invoke(project, monkeypatch, "download", "--model", "aion", "--no-data")
    assert isinstance(result.exception, FmbError) and "is not an fmb lock file" in str(result.exception)
    assert "\n" not in str(result.exception)
    result = invoke(project, monkeypatch, "check", "--model", "pixels")
    assert result.exit_code == 1 and lines(result.output)["lock"][0].startswith("FAIL")

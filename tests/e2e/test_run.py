"""`fmb run` end to end on a small synthetic survey with the pixel-PCA reference model:
every stage runs once, an unchanged rerun skips them all, and a changed detection setting reruns
detection and only the stages downstream of it."""

import os
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fmb.cli import app
from fmb.config import load_config

runner = CliRunner()
SMALL = ["--set", "run.synth=true", "--set", "run.models=[pixels]", "--set", "synth.n=120",
         "--set", "synth.anomaly_rate=0.05", "--set", "synth.workers=1",
         "--set", "detect.folds=2", "--set", "detect.pca_components=8", "--set", "detect.flow.hidden=16",
         "--set", "detect.flow.min_steps=40", "--set", "detect.flow.max_steps=40",
         "--set", "detect.mismatch.min_steps=40", "--set", "detect.mismatch.max_steps=40",
         "--set", "models.pixels.components=8", "--set", "models.pixels.image_size=8",
         "--set", "models.pixels.embed.num_workers=0", "--set", "models.pixels.adapt.num_workers=0",
         "--set", "analyze.probes.folds=2", "--set", "analyze.probes.bootstraps=5",
         "--set", "analyze.figures.umap_neighbors=5", "--set", "analyze.similarity.n_examples=1"]
DOWNSTREAM_OF_DETECT = {"detect", "evaluate", "agreement", "similarity", "figures", "report"}


def statuses(output: str) -> dict[str, str]:
    """stage -> status from the log lines '[stage] running' / '[stage] unchanged, skipped'."""
    found = {}
    for line in output.splitlines():
        if line.startswith("[") and "]" in line:
            stage, rest = line[1:].split("]", 1)
            found[stage] = "ran" if rest.strip() == "running" else rest.strip()
    return found


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("run")
    (root / "fmb.yaml").write_text("name: test\ndata:\n  source: data/synth\nsynth:\n  out: data/synth\n")
    return root


def invoke(project: Path, *extra: str) -> dict[str, str]:
    cwd = os.getcwd()
    os.chdir(project)
    try:
        result = runner.invoke(app, ["run", *SMALL, *extra])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    return statuses(result.output)


@pytest.mark.slow
def test_run_then_rerun_then_change_one_setting(project: Path):
    first = invoke(project)
    assert set(first.values()) == {"ran"}
    assert {"synth", "index", "adapt:pixels", "embed:pixels", "probes", *DOWNSTREAM_OF_DETECT} <= set(first)
    page = load_config(root=project).layout.report.read_text()
    for section in ("Data", "Models and embeddings", "Detection quality", "Top anomalies", "Agreement between systems",
                    "Physical-parameter probes", "Similarity search", "Embedding maps", "Timings"):
        assert f">{section}</h2>" in page
    assert "src='http" not in page and "href='http" not in page  # self-contained: figures are inlined
    assert page.count("data:image/png;base64,") + page.count("data:image/jpeg;base64,") >= 8

    assert set(invoke(project).values()) == {"unchanged, skipped"}

    changed = invoke(project, "--set", "detect.flow.hidden=24")
    assert {stage for stage, status in changed.items() if status == "ran"} == DOWNSTREAM_OF_DETECT

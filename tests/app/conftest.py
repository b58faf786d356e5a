"""A tiny scored run for the app's tests: a 300-object synthetic survey (5 % of each anomaly class)
through the real CLI (synth, index, adapt, embed and detect with the pixel reference)."""

from pathlib import Path

import pytest

from tests.conftest import run_cli

#: The small, fast settings of tests/e2e/test_detect_evaluate.py for 300 objects, in the project file,
#: so every command and every `load_config(root=project)` sees the same run.
PROJECT_FILE = """\
name: test
data: {source: data/synth}
synth: {n: 300, anomaly_rate: 0.05, workers: 1}
run: {models: [pixels]}
detect:
  folds: 2
  pca_components: 8
  flow: {hidden: 16, min_steps: 60, max_steps: 60}
models:
  pixels:
    components: 8
    image_size: 8
    embed: {num_workers: 0, rows_per_shard: 100}
    adapt: {num_workers: 0}
"""


def run_fmb(project: Path, *args: str):
    """`fmb <args>` in `project` (the shared `run_cli`); fails the test on a non-zero exit."""
    result = run_cli(project, *args)
    assert result.exit_code == 0, result.output
    return result


def run_config(project: Path):
    """The config of the scored run in `project` (its layout knows every path of the run)."""
    from fmb.config import load_config

    return load_config(root=project)


@pytest.fixture(scope="session")
def scored_run(tmp_path_factory) -> Path:
    """The project directory of a scored run: fmb.yaml, the survey (with its truth table) and the run
    `test` with scores/pixels.parquet. Read it with `run_config(project)`; a test that writes into it
    writes only under the run's app directory, and leaves what it wrote as it found it."""
    project = tmp_path_factory.mktemp("scored")
    (project / "fmb.yaml").write_text(PROJECT_FILE)
    for command in (["data", "synth"], ["data", "index"], ["adapt", "pixels"], ["embed", "pixels"], ["detect"]):
        run_fmb(project, *command)
    return project

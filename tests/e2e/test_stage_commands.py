"""Stage commands run through the same engine as `fmb run`, and a model added through the registry
alone goes through `fmb adapt`, `fmb embed`, `fmb detect` and `fmb run`."""

from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fmb import plugins
from fmb.cli import app
from fmb.config import load_config
from tests.conftest import tagged_row, write_rows
from tests.e2e.test_run import statuses

runner = CliRunner()
TOY = ["--set", "run.models=[toy]", "--set", "detect.methods=[knn,ecod]", "--set", "detect.fusion_method=knn",
       "--set", "analyze.agreement.methods=[knn,mismatch,fused_geo]", "--set", "analyze.figures.umap_neighbors=5",
       "--set", "detect.folds=2", "--set", "detect.pca_components=4", "--set", "detect.mismatch.min_steps=20",
       "--set", "detect.mismatch.max_steps=20", "--set", "models.toy.width=4",
       "--set", "models.toy.embed.num_workers=0", "--set", "models.toy.adapt.num_workers=0"]


@pytest.fixture
def toy_project(project: Path, monkeypatch) -> Path:
    """A tagged survey and the toy encoder registered by one line (undone after the test)."""
    monkeypatch.setitem(plugins.ENCODERS, "toy", "tests.e2e.toy_encoder:ToyEncoder")
    plugins.load.cache_clear()
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(1000 + i) for i in range(60)])
    (project / "fmb.yaml").write_text("name: test\ndata:\n  source: survey\n")
    monkeypatch.chdir(project)
    yield project
    plugins.load.cache_clear()


def invoke(*args: str) -> str:
    result = runner.invoke(app, [*args, *TOY])
    assert result.exit_code == 0, result.output
    return result.output


@pytest.mark.slow
def test_a_registered_toy_model_runs_through_the_stage_commands_and_fmb_run_skips_them(toy_project: Path):
    invoke("data", "index")
    assert "scale" in invoke("adapt", "toy")
    invoke("embed", "toy")
    invoke("detect")
    config = load_config(root=toy_project, sets=TOY[1::2])
    scores = pq.read_table(config.layout.scores.table("toy")).to_pandas()
    assert len(scores) == 60 and {"score_image_knn", "score_joint_ecod", "mismatch", "fused_geo"} <= set(scores)

    again = statuses(invoke("detect"))
    assert again == {"detect": "unchanged, skipped"}  # a direct command caches like `fmb run`

    ran = statuses(invoke("run"))
    for stage in ("index", "adapt:toy", "embed:toy", "detect"):
        assert ran[stage] == "unchanged, skipped", (stage, ran)
    assert ran["report"] == "ran"
    assert "toy model" in config.layout.report.read_text()  # the encoder's own label


@pytest.mark.slow
def test_dry_run_says_why_each_stage_would_run(toy_project: Path):
    invoke("run")
    output = invoke("run", "--dry-run", "--set", "detect.knn.n_neighbors=3", "--set", "models.toy.embed.batch_size=7")
    lines = {line.split()[0]: line.split(maxsplit=2)[1:] for line in output.splitlines() if line.strip()}
    assert lines["embed:toy"] == ["skip", "unchanged, skipped"]  # a batch size cannot change embeddings
    assert lines["detect"][0] == "run" and "config detect.knn.n_neighbors 10 -> 3" in lines["detect"][1]
    assert lines["agreement"] == ["run", "upstream detect reruns"]

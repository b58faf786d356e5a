"""detect -> evaluate through the CLI on pixel-reference embeddings of a small synthetic survey."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from fmb.cli import app

runner = CliRunner()
FAST = ["--set", "synth.n=160", "--set", "synth.anomaly_rate=0.05", "--set", "synth.workers=1",
        "--set", "detect.folds=2", "--set", "detect.pca_components=8", "--set", "detect.flow.hidden=16",
        "--set", "detect.flow.min_steps=60", "--set", "detect.flow.max_steps=60",
        "--set", "models.pixels.components=8", "--set", "models.pixels.image_size=8",
        "--set", "models.pixels.embed.num_workers=0", "--set", "models.pixels.adapt.num_workers=0",
        "--set", "models.pixels.embed.rows_per_shard=40"]


def invoke(*args):
    result = runner.invoke(app, [*args, *FAST])
    assert result.exit_code == 0, result.output
    return result


def run_config(project: Path):
    """The config of the test run in `project`: its layout knows every path of the run."""
    from fmb.config import load_config

    return load_config(root=project)


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    project = tmp_path_factory.mktemp("detect")
    (project / "fmb.yaml").write_text("name: test\ndata:\n  source: data/synth\n")
    import os

    cwd = os.getcwd()
    os.chdir(project)
    try:
        for command in (["data", "synth"], ["data", "index"], ["adapt", "pixels"], ["embed", "pixels"], ["detect"]):
            invoke(*command)
    finally:
        os.chdir(cwd)
    return project


def test_scores_follow_the_contract(scored: Path):
    layout = run_config(scored).layout
    frame = pq.read_table(layout.scores.table("pixels")).to_pandas()
    assert len(frame) == 160 and frame.object_id.is_unique
    for column in ("score_image_flow", "pct_image_flow", "rank_image_flow", "score_joint_knn", "mismatch",
                   "fused_geo", "fused_min", "fused_avg", "uplift"):
        assert column in frame.columns
    assert frame.pct_image_flow.max() == 1.0 and frame.rank_image_flow.min() == 1
    assert layout.scores.detectors("pixels").is_file()


def test_truth_never_reaches_the_detectors(scored: Path, tmp_path: Path, monkeypatch):
    """Detection without the truth file on disk gives identical scores, and never opens it."""
    from fmb.analyze.evaluate import truth_path

    copy = tmp_path / "copy"
    shutil.copytree(scored, copy, ignore=shutil.ignore_patterns(run_config(scored).layout.scores.dir.name))
    truth = truth_path(run_config(copy))
    truth.unlink()
    monkeypatch.chdir(copy)
    opened = []
    original = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: (opened.append(str(path)), original(path, *a, **k))[1])
    invoke("detect")
    assert opened and not any(path.endswith(truth.name) for path in opened)
    a = pq.read_table(run_config(scored).layout.scores.table("pixels")).to_pandas()
    b = original(run_config(copy).layout.scores.table("pixels")).to_pandas()
    np.testing.assert_allclose(a.filter(like="score_").to_numpy(), b.filter(like="score_").to_numpy())


def test_detect_as_shards_in_two_processes_equals_one_process(scored: Path, tmp_path: Path, monkeypatch):
    """executor.workers=2, three shards: the fit is one job, the four embedding parts are scored in
    two other processes, the merge gives the single-process table exactly; `fmb status` counts them."""
    import pandas as pd

    copy = tmp_path / "copy"
    shutil.copytree(scored, copy, ignore=shutil.ignore_patterns(run_config(scored).layout.scores.dir.name))
    monkeypatch.chdir(copy)
    result = invoke("detect", "--set", "executor.workers=2", "--set", "executor.shards=3")
    assert "3 shards (0 done before), 3 to run on local" in result.output
    layout = run_config(copy).layout
    assert len(list(layout.scores.part("pixels", 0).parent.glob("part-*.parquet"))) == 4
    pd.testing.assert_frame_equal(pq.read_table(layout.scores.table("pixels")).to_pandas(),
                                  pq.read_table(run_config(scored).layout.scores.table("pixels")).to_pandas())
    assert "detect: 3 shards on local: 3 done, 0 running, 0 failed, 0 not started" in invoke("status").output


def test_the_merge_reads_the_scored_parts_and_the_fit_record_not_the_detectors(scored: Path, tmp_path: Path,
                                                                              monkeypatch):
    """The saved detectors (hundreds of MB at survey scale) are for scoring; the merge needs only the
    parts and fit.json, so it runs with detectors.pt made unreadable and writes the same table."""
    import pandas as pd

    from fmb.detect.tasks import finish_detect

    copy = tmp_path / "copy"
    shutil.copytree(scored, copy)
    monkeypatch.chdir(copy)
    config = run_config(copy)
    files = config.layout.scores
    files.table("pixels").unlink()
    files.detectors("pixels").write_bytes(b"not a torch file")
    finish_detect(config, log=lambda line: None)
    pd.testing.assert_frame_equal(pq.read_table(files.table("pixels")).to_pandas(),
                                  pq.read_table(run_config(scored).layout.scores.table("pixels")).to_pandas())


def test_evaluate_writes_tables_and_figure(scored: Path, monkeypatch):
    monkeypatch.chdir(scored)
    invoke("analyze", "evaluate")
    out = run_config(scored).layout.evaluation
    metrics = __import__("pandas").read_csv(out.metrics)
    assert {"model", "score", "class", "ap", "auroc", "recall_1pct", "recall_5pct"} <= set(metrics.columns)
    assert "mispaired" in set(metrics["class"]) and "all" in set(metrics["class"])
    assert out.summary.read_text().startswith("# Detection quality")
    assert out.heatmap.stat().st_size > 10_000


def test_above_max_objects_evaluation_reads_the_same_seeded_share_of_every_table(scored: Path, tmp_path: Path,
                                                                                 monkeypatch):
    """Memory bounded whatever N: a share of the truth's ids (160 objects, at most 100 here), the same
    objects in the model's table and in the trivial scores."""
    import pandas as pd

    copy = tmp_path / "copy"
    shutil.copytree(scored, copy)
    monkeypatch.chdir(copy)
    invoke("analyze", "evaluate", "--set", "evaluate.max_objects=100")
    metrics = pd.read_csv(run_config(copy).layout.evaluation.metrics)
    overall = metrics[(metrics["class"] == "all") & metrics.score.isin(["fused_cauchy", "total_flux"])]
    assert set(overall.model) == {"pixels", "trivial"}
    assert overall.objects.nunique() == 1 and 70 <= overall.objects.iloc[0] <= 130


def test_saved_detectors_score_new_objects_without_refitting(scored: Path, monkeypatch):
    monkeypatch.chdir(scored)
    out = scored / "rescored.parquet"
    layout = run_config(scored).layout
    invoke("detect", "score", "pixels", "--embeddings", str(layout.embeddings("pixels").dir), "--out", str(out))
    again = pq.read_table(out).to_pandas()
    original = pq.read_table(layout.scores.table("pixels")).to_pandas()
    np.testing.assert_allclose(again.score_image_flow, original.score_image_flow)
    np.testing.assert_allclose(again.mismatch, original.mismatch)

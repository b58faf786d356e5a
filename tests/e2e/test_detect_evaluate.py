"""detect -> evaluate through the CLI, on the session's shared pipeline run (tests/conftest.py: the
pixel reference and a tiny AstroCLIP on a small synthetic survey). Tests that rerun detection work on
a copy, with the pixel reference alone (`detect.models=[pixels]`): its table does not depend on the
other models, so it must equal the pipeline's."""

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fmb.config import load_config
from tests.conftest import run_cli

PIXELS_ONLY = ["--set", "detect.models=[pixels]"]


def invoke(project: Path, *args):
    result = run_cli(project, *args, "--run", "pipeline")
    assert result.exit_code == 0, result.output
    return result


def run_config(project: Path):
    """The config of the pipeline run in `project`: its layout knows every path of the run."""
    return load_config(cli={"name": "pipeline"}, root=project)


def test_scores_follow_the_contract(pipeline: Path):
    layout = run_config(pipeline).layout
    frame = pq.read_table(layout.scores.table("pixels")).to_pandas()
    assert len(frame) == 240 and frame.object_id.is_unique
    for column in ("score_image_flow", "pct_image_flow", "rank_image_flow", "score_joint_knn", "mismatch",
                   "fused_geo", "fused_min", "fused_avg", "uplift"):
        assert column in frame.columns
    assert frame.pct_image_flow.max() == 1.0 and frame.rank_image_flow.min() == 1
    assert layout.scores.detectors("pixels").is_file()


def rescored_copy(pipeline: Path, tmp_path: Path) -> Path:
    """A copy of the pipeline project without its scores."""
    return Path(shutil.copytree(pipeline, tmp_path / "copy",
                                ignore=shutil.ignore_patterns(run_config(pipeline).layout.scores.dir.name)))


def test_truth_never_reaches_the_detectors(pipeline: Path, tmp_path: Path, monkeypatch):
    """Detection without the truth file on disk gives identical scores, and never opens it."""
    from fmb.analyze.evaluate import truth_path

    copy = rescored_copy(pipeline, tmp_path)
    truth = truth_path(run_config(copy))
    truth.unlink()
    opened = []
    original = pq.read_table
    monkeypatch.setattr(pq, "read_table", lambda path, *a, **k: (opened.append(str(path)), original(path, *a, **k))[1])
    invoke(copy, "detect", *PIXELS_ONLY)
    assert opened and not any(path.endswith(truth.name) for path in opened)
    a = original(run_config(pipeline).layout.scores.table("pixels")).to_pandas()
    b = original(run_config(copy).layout.scores.table("pixels")).to_pandas()
    np.testing.assert_allclose(a.filter(like="score_").to_numpy(), b.filter(like="score_").to_numpy())


def test_detect_as_shards_in_two_processes_equals_one_process(pipeline: Path, tmp_path: Path):
    """executor.workers=2, three shards: the fit is one job, the three embedding parts are scored in
    two other processes, the merge gives the single-process table exactly; `fmb status` counts them."""
    import pandas as pd

    copy = rescored_copy(pipeline, tmp_path)
    result = invoke(copy, "detect", *PIXELS_ONLY, "--set", "executor.workers=2", "--set", "executor.shards=3")
    assert "3 shards (0 done before), 3 to run on local" in result.output
    layout = run_config(copy).layout
    assert len(list(layout.scores.part("pixels", 0).parent.glob("part-*.parquet"))) == 3
    pd.testing.assert_frame_equal(pq.read_table(layout.scores.table("pixels")).to_pandas(),
                                  pq.read_table(run_config(pipeline).layout.scores.table("pixels")).to_pandas())
    assert "detect: 3 shards on local: 3 done, 0 running, 0 failed, 0 not started" in invoke(copy, "status").output


def test_the_merge_reads_the_scored_parts_and_the_fit_record_not_the_detectors(pipeline: Path, pipeline_copy: Path):
    """The saved detectors (hundreds of MB at survey scale) are for scoring; the merge needs only the
    parts and fit.json, so it runs with detectors.pt made unreadable and writes the same tables."""
    import pandas as pd

    from fmb.detect.tasks import finish_detect

    config = run_config(pipeline_copy)
    files = config.layout.scores
    for model in ("pixels", "astroclip"):
        files.table(model).unlink()
        files.detectors(model).write_bytes(b"not a torch file")
    finish_detect(config, log=lambda line: None)
    for model in ("pixels", "astroclip"):
        pd.testing.assert_frame_equal(pq.read_table(files.table(model)).to_pandas(),
                                      pq.read_table(run_config(pipeline).layout.scores.table(model)).to_pandas())


def test_evaluate_wrote_tables_and_figure(pipeline: Path):
    assert "nothing changed" in invoke(pipeline, "analyze", "evaluate").output
    out = run_config(pipeline).layout.evaluation
    metrics = __import__("pandas").read_csv(out.metrics)
    assert {"model", "score", "class", "ap", "auroc", "recall_1pct", "recall_5pct"} <= set(metrics.columns)
    assert "mispaired" in set(metrics["class"]) and "all" in set(metrics["class"])
    assert out.summary.read_text().startswith("# Detection quality")
    assert out.heatmap.stat().st_size > 10_000


def test_above_max_objects_evaluation_reads_the_same_seeded_share_of_every_table(pipeline_copy: Path):
    """Memory bounded whatever N: a share of the truth's ids (240 objects, at most 100 here), the same
    objects in the models' tables and in the trivial scores."""
    import pandas as pd

    invoke(pipeline_copy, "analyze", "evaluate", "--set", "evaluate.max_objects=100")
    metrics = pd.read_csv(run_config(pipeline_copy).layout.evaluation.metrics)
    overall = metrics[(metrics["class"] == "all") & metrics.score.isin(["fused_cauchy", "total_flux"])]
    assert {"pixels", "astroclip", "trivial"} == set(overall.model)
    assert overall.objects.nunique() == 1 and 60 <= overall.objects.iloc[0] <= 140


def test_saved_detectors_score_new_objects_without_refitting(pipeline: Path, tmp_path: Path):
    out = tmp_path / "rescored.parquet"
    layout = run_config(pipeline).layout
    invoke(pipeline, "detect", "score", "pixels", "--embeddings", str(layout.embeddings("pixels").dir),
           "--out", str(out))
    again = pq.read_table(out).to_pandas()
    original = pq.read_table(layout.scores.table("pixels")).to_pandas()
    np.testing.assert_allclose(again.score_image_flow, original.score_image_flow)
    np.testing.assert_allclose(again.mismatch, original.mismatch)

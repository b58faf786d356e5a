"""The original research code's command names (reference §9) run on a small synthetic survey and do
what their fmb equivalents do: each alias runs the same stage with the same key, so the fmb command
run after it finds nothing changed (same config, same inputs, outputs present), and the files it
names are there. Plus `--slurm` on a stage that is not sharded, `fmb app --run` with a run directory, and the
importers of the original's files through the CLI.

One project is built once for the module (synth, index, adapt and embed the pixel reference); the
stages each test needs run on it once, whichever test comes first."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmb.config import load_config
from fmb.embed.store import load_embeddings
from fmb.layout import RunLayout
from tests.conftest import run_cli

N = 80
PROJECT = f"""name: test
data: {{source: data/synth}}
synth: {{out: data/synth, n: {N}, anomaly_rate: 0.05, workers: 1}}
run: {{models: [pixels]}}
models:
  pixels: {{components: 8, image_size: 8, embed: {{num_workers: 0}}, adapt: {{num_workers: 0}}}}
  aion_codec: {{adapt: {{num_workers: 0, max_steps: 1, max_objects: 8, batch_size: 4}}}}
detect: {{folds: 2, pca_components: 8, methods: [flow, knn], flow: {{hidden: 16, min_steps: 20, max_steps: 20}},
         mismatch: {{min_steps: 20, max_steps: 20}}}}
analyze: {{probes: {{folds: 2, bootstraps: 5}}, figures: {{umap_neighbors: 5}}, similarity: {{n_examples: 1}}}}
"""


def invoke(project: Path, *args: str) -> str:
    result = run_cli(project, *args)
    assert result.exit_code == 0, (args, result.output, result.exception)
    return result.output


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("original")
    (root / "fmb.yaml").write_text(PROJECT)
    for command in (["data", "synth"], ["data", "index"], ["adapt", "pixels"], ["embed", "pixels"]):
        invoke(root, *command)
    return root


@pytest.fixture(scope="module")
def config(project: Path):
    return load_config(root=project)


@pytest.fixture(scope="module")
def detected(project: Path) -> Path:
    invoke(project, "detect")  # nothing to do when a detect alias ran it already
    return project


def same_stage(project: Path, original: list[str], fmb: list[str], stage: str) -> str:
    """Run the original's command, then the fmb one: the latter finds `stage` done with the same key."""
    output = invoke(project, *original)
    assert f"{stage}: nothing changed since it last ran" in invoke(project, *fmb)
    return output


def test_paths_prints_the_run_directories(project: Path, config):
    layout = config.layout
    lines = dict(line.split(maxsplit=1) for line in invoke(project, "paths").splitlines())
    assert lines == {"data": str(project / "data" / "synth"), "embeddings": str(layout.embeddings_dir),
                     "checkpoints": str(layout.models_dir), "runs": str(layout.root), "cache": str(layout.cache(""))}
    assert invoke(project, "paths", "--embeddings").strip() == str(layout.embeddings_dir)
    assert invoke(project, "paths", "--data", "--runs").splitlines() == [lines["data"], lines["runs"]]


def test_display_draws_the_object_at_an_index_position(project: Path, config, tmp_path: Path):
    from fmb.data.index import ObjectIndex

    second = int(ObjectIndex.load(config.layout.data.dir).ids[1])
    invoke(project, "display", "--index", "1", "--save", str(tmp_path / "a.png"), "--no-gui")
    invoke(project, "data", "show", str(second), "--out", str(tmp_path / "b.png"))
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_viz_single_object_is_data_show(project: Path, config, tmp_path: Path):
    first = int(pd.read_parquet(config.layout.data.index)["object_id"].iloc[0])
    invoke(project, "viz", "single-object", "--object-id", str(first), "--save", str(tmp_path / "a.png"),
           "--smooth", "3")
    invoke(project, "data", "show", str(first), "--out", str(tmp_path / "b.png"), "--smooth", "3")
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


def test_data_index_and_embed_keep_their_names(project: Path):
    same_stage(project, ["data", "index"], ["data", "index"], "index")
    same_stage(project, ["embed", "pixels"], ["embed", "pixels"], "embed:pixels")


def test_retrain_aion_codec_is_adapt_aion_codec(project: Path, config):
    output = same_stage(project, ["retrain", "aion_codec", "--preset", "tiny"],
                        ["adapt", "aion_codec", "--preset", "tiny"], "adapt:aion_codec")
    assert "adapted aion_codec" in output  # the alias ran the stage; `fmb adapt` then found it done
    assert config.layout.model("aion_codec").best.is_file()


def test_detect_outliers_is_detect_with_the_flow_scores(project: Path, config):
    output = same_stage(project, ["detect", "outliers"], ["detect"], "detect")
    scores = pd.read_parquet(config.layout.scores.table("pixels"))
    for modality in ("image", "spectrum", "joint"):
        best = scores.sort_values([f"score_{modality}_flow", "object_id"], ascending=[False, True]).iloc[0]
        assert f"pixels score_{modality}_flow: top 5 {int(best.object_id)} " in output
    assert "score_joint_knn" not in output  # the density flow, as the original's outliers


def test_detect_cosine_lists_the_misalignment(project: Path):
    output = same_stage(project, ["detect", "cosine", "--top-k", "2"], ["detect"], "detect")
    assert "pixels mismatch: top 2" in output and "pixels mismatch_residual: top 2" in output


def test_detect_multimodal_lists_the_fused_ranking(project: Path, config):
    output = same_stage(project, ["detect", "multimodal", "--top-k", "3", "--fusion", "min"], ["detect"], "detect")
    scores = pd.read_parquet(config.layout.scores.table("pixels"))
    best = scores.sort_values(["fused_min", "object_id"], ascending=[False, True]).iloc[0]
    assert f"pixels fused_min: top 3 {int(best.object_id)} " in output


@pytest.mark.parametrize("original", [["analyze", "outliers"], ["analyze", "displacement"],
                                      ["viz", "advanced-analysis"]])
def test_agreement_aliases(detected: Path, config, original: list[str]):
    same_stage(detected, original, ["analyze", "agreement"], "agreement")
    files = config.layout.agreement
    assert files.matrix("spearman").is_file() and files.disagreement.is_file() and files.figure("jaccard").is_file()


@pytest.mark.parametrize("original", [["analyze", "neighbor-ranks", "--n-similar", "4"],
                                      ["analyze", "similarity", "--n-similar", "4"]])
def test_neighbor_ranks_and_similarity_are_the_similarity_stage(detected: Path, config, original: list[str]):
    same_stage(detected, original, ["analyze", "similarity", "--k", "4"], "similarity")
    files = config.layout.similarity
    assert files.neighbour_ranks.is_file() and files.neighbour_ranks_plot.is_file()
    assert pd.read_csv(files.neighbours).groupby(["model", "modality", "query_id"]).size().max() == 4


def test_regression_runs_probes_as_one_job_with_slurm(detected: Path, config, monkeypatch):
    """`--slurm` on a stage that is not sharded submits it as one job through the run's executor.
    No SLURM cluster is reachable here, so the executor is submitit's local cluster (the same
    submission, pickled and run in another process); tests/e2e/test_slurm.py has the real one."""
    from fmb.run import executors

    monkeypatch.setattr(executors, "executor_for",
                        lambda settings, folder, log=print: executors.SlurmExecutor(settings.slurm, folder,
                                                                                      cluster="local", log=log))
    output = same_stage(detected, ["analyze", "regression", "--slurm", "--set", "executor.slurm.poll_s=0.2"],
                        ["analyze", "probes"], "probes")
    assert "submitting probes as one slurm job" in output
    assert list(config.layout.shards("probes").dir.glob("jobs/*/*_log.out"))  # it ran as a job
    assert config.layout.probes.results.is_file()
    same_stage(detected, ["analyze", "predict-params"], ["analyze", "probes"], "probes")


@pytest.mark.parametrize("original", [["viz", "paper-umap", "--physical-param", "redshift", "--max", "6"],
                                      ["viz", "outlier-grid", "--max", "6"], ["analyze", "tsne", "--max", "6"]])
def test_figure_aliases(detected: Path, config, original: list[str]):
    same_stage(detected, original, ["analyze", "figures", "--color-by", "Z", "--gallery-size", "6"], "figures")
    assert config.layout.figures.umap.is_file() and config.layout.figures.gallery("pixels").is_file()


def test_app_opens_a_run_given_by_its_directory(detected: Path, tmp_path: Path, monkeypatch):
    """`fmb app --run` with a run directory: the blocking uvicorn server is replaced by a recorder of the app it
    would serve, which is then asked for the run's ranked list."""
    import uvicorn
    from fastapi.testclient import TestClient

    served = []
    monkeypatch.setattr(uvicorn, "run", lambda asgi, **_options: served.append(asgi))
    run_dir = RunLayout.of(detected, "test").root
    invoke(detected, "app", "--run", str(run_dir.relative_to(detected)))  # relative to the project, as users type it
    invoke(tmp_path, "app", "--run", str(run_dir))  # from elsewhere: the project is the path's
    assert [asgi.title for asgi in served] == ["fmb discovery: test"] * 2
    listing = TestClient(served[1], base_url="http://127.0.0.1").get("/api/list").json()
    assert listing["model"] == "pixels" and listing["total"] == N


def test_the_originals_files_import_into_a_run_that_analyses_them(detected: Path, config, tmp_path: Path):
    """Embeddings exported to the original's .pt and scores written as the original's CSVs, imported
    into another run: the same vectors and scores come back, and agreement runs on them."""
    exported = tmp_path / "astropt_embeddings.pt"
    invoke(detected, "embed", "pixels", "--export-pt", str(exported))
    invoke(detected, "import", "embeddings", str(exported), "--model", "pixels", "--name", "imported")
    ids, vectors = load_embeddings(config.layout.embeddings("pixels").dir)
    imported = load_config(root=detected, sets=["name=imported"])
    ids_back, vectors_back = load_embeddings(imported.layout.embeddings("pixels").dir)
    np.testing.assert_array_equal(ids, ids_back)
    np.testing.assert_array_equal(vectors["joint"], vectors_back["joint"])

    scores = pd.read_parquet(config.layout.scores.table("pixels"))
    density = pd.concat([pd.DataFrame({"object_id": scores.object_id, "embedding_key": key,
                                       "log_prob": -scores[column], "neg_log_prob": scores[column],
                                       "anomaly_sigma": 0.0, "rank": scores[f"rank_{column[6:]}"]})
                         for key, column in (("embedding_images", "score_image_flow"),
                                             ("embedding_spectra", "score_spectrum_flow"),
                                             ("embedding_joint", "score_joint_flow"))])
    density.to_csv(tmp_path / "anomaly_scores_pixels.csv", index=False)
    output = invoke(detected, "import", "scores", str(tmp_path / "anomaly_scores_pixels.csv"), "--model", "pixels",
                    "--name", "imported")
    assert f"imported {N} objects of pixels (score_image_flow, score_joint_flow, score_spectrum_flow)" in output
    back = pd.read_parquet(imported.layout.scores.table("pixels"))
    scores = scores.sort_values("object_id").reset_index(drop=True)
    np.testing.assert_array_equal(back["object_id"], scores["object_id"])
    for column in ("score_image_flow", "score_spectrum_flow", "score_joint_flow", "rank_joint_flow"):
        np.testing.assert_allclose(back[column].to_numpy(float), scores[column].to_numpy(float))

    invoke(detected, "analyze", "agreement", "--name", "imported", "--set", "analyze.agreement.methods=[flow]")
    spearman = pd.read_csv(imported.layout.agreement.matrix("spearman"), index_col=0)
    assert spearman.shape == (3, 3) and np.allclose(np.diag(spearman), 1)

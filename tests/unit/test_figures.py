"""Stage-5 figures: the UMAP cache follows its inputs, galleries and mosaics pick the right objects,
and the whole task draws its PNGs from a tiny run (UMAP itself replaced by a counted projection)."""

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from PIL import Image

from fmb.analyze import figures as figures_module
from fmb.analyze.figures import colour_panels, figures, gallery_title
from fmb.config import load_config
from fmb.data.tasks import index
from fmb.detect.fusion import Calibration, calibrate, fuse
from fmb.detect.scores import frame_headline, load_score_tables, top
from fmb.embed import store
from fmb.io import write_table
from fmb.layout import EmbeddingFiles, SurveyLayout
from fmb.viz import umap_map
from fmb.viz.umap_map import MapPanel, UmapSettings, mosaic_picks, umap_coordinates
from tests.conftest import tagged_row, write_rows

SETTINGS = UmapSettings(neighbors=5, min_dist=0.1, max_objects=100, seed=0)


@pytest.fixture
def umap_fits(monkeypatch) -> list[int]:
    """Replace the UMAP fit by a projection on the first two axes; the list records each fit's size."""
    fits: list[int] = []

    def project(vectors, settings):
        fits.append(len(vectors))
        return np.ascontiguousarray(vectors[:, :2], dtype=np.float32)

    monkeypatch.setattr(umap_map, "fit_umap", project)
    return fits


def test_umap_cache_hits_on_same_inputs_and_misses_on_new_vectors_or_settings(tmp_path, umap_fits):
    rng = np.random.default_rng(0)
    ids, vectors = np.arange(500, 750), rng.normal(size=(250, 6)).astype(np.float32)
    first_ids, first_xy = umap_coordinates("toy", ids, vectors, SETTINGS, tmp_path)
    again_ids, again_xy = umap_coordinates("toy", ids, vectors.copy(), SETTINGS, tmp_path)
    assert umap_fits == [100]  # subsampled to max_objects, fitted once
    np.testing.assert_array_equal(first_ids, again_ids)
    np.testing.assert_array_equal(first_xy, again_xy)
    assert len(first_ids) == 100 and np.all(np.diff(first_ids) > 0) and set(first_ids) <= set(ids)

    vectors[17, 3] += 1e-3  # re-embedded under the same name
    umap_coordinates("toy", ids, vectors, SETTINGS, tmp_path)
    umap_coordinates("toy", ids, vectors, UmapSettings(5, 0.3, 100, 0), tmp_path)
    umap_coordinates("toy", ids[::-1].copy(), vectors, SETTINGS, tmp_path)
    assert len(umap_fits) == 4
    assert len(list(tmp_path.glob("umap-toy-*.npz"))) == 1  # stale maps of the name are removed


def test_gallery_ranking_is_by_score_not_file_order():
    frame = pd.DataFrame({"object_id": [11, 12, 13, 14, 15, 16],
                          "fused_geo": [0.2, np.nan, 0.9, 0.5, 0.9, 0.7]})
    best = top(frame, "fused_geo", 4)
    assert best["object_id"].tolist() == [13, 15, 16, 14]  # tie at 0.9: lower id first; NaN never ranked
    assert best["rank"].tolist() == [1, 1, 3, 4]  # the ranking rule: tied scores share the best rank
    assert top(frame, "fused_geo", 10)["object_id"].tolist() == [13, 15, 16, 14, 11]


def test_the_headline_column_falls_back_to_an_available_score():
    frame = pd.DataFrame({"object_id": [1, 2], "fused_geo": [np.nan, np.nan], "score_image_flow": [1.0, 2.0],
                          "score_joint_flow": [3.0, 1.0]})
    assert frame_headline(frame, "fused_geo", "flow") == "score_joint_flow"  # all-NaN fused scores are no ranking
    assert frame_headline(frame, "score_image_flow", "flow") == "score_image_flow"
    assert frame_headline(frame[["object_id"]], "fused_geo", "flow") is None


def test_gallery_title_names_rank_id_redshift_and_percentiles():
    record = {"rank": 1, "object_id": 39627007000007520, "fused_geo": 0.99071, "pct_image_flow": 0.998,
              "pct_spectrum_flow": 0.985, "pct_mismatch": 0.999}
    assert gallery_title(record, 0.1214, "fused_geo", "flow") == (
        "#1  39627007000007520  z=0.121\nfused_geo 0.9907  img 0.998  spec 0.985  mis 0.999")
    assert "z unknown" in gallery_title(record, np.nan, "fused_geo", "flow")


def test_mosaic_picks_the_object_nearest_each_cell_centre():
    xy = np.array([
        [0.05, 0.05],  # 0: cell (0, 0), far from its centre (0.25, 0.25)
        [0.27, 0.22],  # 1: cell (0, 0), nearest
        [0.90, 0.10],  # 2: cell (1, 0), alone
        [0.875, 0.875],  # 3: cell (1, 1), exactly 0.125*sqrt(2) from its centre (0.75, 0.75)
        [0.625, 0.625],  # 4: cell (1, 1), the same distance: the lower index wins
        [1.30, 0.50],  # 5: outside the unit box, never drawn
    ])
    picks, cells = mosaic_picks(xy, 2)
    assert dict(zip(map(tuple, cells.tolist()), picks.tolist())) == {(0, 0): 1, (1, 0): 2, (1, 1): 3}
    assert mosaic_picks(xy[5:], 2)[0].size == 0  # nothing inside: nothing drawn


# -- the task on a tiny run -------------------------------------------------------------------------
N = 40
IDS = np.arange(1000, 1000 + N)
#: Two registered models of the run (`run.models`): one embedded jointly and scored, one image-only and unscored.
JOINT, IMAGE_ONLY = "pixels", "aion"


def write_embeddings(files: EmbeddingFiles, matrices: dict[str, np.ndarray]) -> None:
    store.write_embeddings(files.dir, {"model": files.dir.name}, IDS, matrices)


def write_scores(config, model: str, seed: int) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame({"object_id": IDS, **{f"score_{m}_flow": rng.normal(size=N) for m in ("image", "spectrum", "joint")},
                          "mismatch": rng.normal(size=N)})
    frame = fuse(calibrate(frame, Calibration(0.05), ["flow"], np.ones(N, dtype=bool)), "flow")
    write_table(pa.Table.from_pandas(frame, preserve_index=False), config.layout.scores.table(model))
    return frame


@pytest.fixture
def tiny_run(project: Path):
    """A 40-object survey with a catalog (Z = id / 10000), one joint-embedded model with scores and
    one image-only model without."""
    write_rows(project / "survey" / "part-0.parquet", [tagged_row(int(i), seed=int(i)) for i in IDS])
    pd.DataFrame({"TARGETID": IDS, "Z": IDS / 10_000}).to_parquet(SurveyLayout(project / "survey").catalog)
    config = load_config(root=project, sets=["data.source=survey", "analyze.figures.gallery_size=4",
                                             "analyze.figures.mosaic_cells=4", f"run.models=[{JOINT}, {IMAGE_ONLY}]"])
    index(config)
    rng = np.random.default_rng(1)
    write_embeddings(config.layout.embeddings(JOINT), {"image": rng.normal(size=(N, 4)),
                                                       "joint": rng.normal(size=(N, 8))})
    write_embeddings(config.layout.embeddings(IMAGE_ONLY), {"image": rng.normal(size=(N, 4))})
    write_scores(config, JOINT, seed=2)
    return config


def test_figures_end_to_end_draws_pngs_and_reuses_maps_until_vectors_change(tiny_run, umap_fits, monkeypatch):
    paths = figures(tiny_run, log=lambda message: None)
    assert set(paths) == {"umap", "scores", f"gallery_{JOINT}"}
    assert paths == {"umap": tiny_run.layout.figures.umap, "scores": tiny_run.layout.figures.scores,
                     f"gallery_{JOINT}": tiny_run.layout.figures.gallery(JOINT)}
    for path in paths.values():
        assert path.parent == tiny_run.layout.figures.dir
        with Image.open(path) as image:
            assert image.format == "PNG" and min(image.size) > 300
    assert umap_fits == [N, N]

    for drawing in ("draw_umap_figure", "draw_score_distributions", "draw_gallery"):  # reruns: only the maps matter
        monkeypatch.setattr(figures_module, drawing, lambda *args, **kwargs: Path("not drawn"))
    figures(tiny_run, log=lambda message: None)
    assert umap_fits == [N, N]  # unchanged inputs: both maps read from the cache

    write_embeddings(tiny_run.layout.embeddings(JOINT), {"joint": np.ones((N, 8)) + np.eye(N, 8)})
    figures(tiny_run, log=lambda message: None)
    assert umap_fits == [N, N, N]  # only the re-embedded model is mapped again


def test_maps_are_coloured_by_catalog_row_of_each_object_else_by_anomaly_percentile(tiny_run):
    shuffled = IDS[::-1].copy()
    panel = MapPanel(JOINT, shuffled, np.zeros((N, 2)), None)
    label = colour_panels(tiny_run, [panel], [JOINT], load_score_tables(tiny_run))
    assert label == "redshift z"
    np.testing.assert_allclose(panel.values, shuffled / 10_000)

    SurveyLayout(tiny_run.path("survey")).catalog.unlink()
    scores = load_score_tables(tiny_run)
    label = colour_panels(tiny_run, [panel], [JOINT], scores)
    assert label.startswith("anomaly percentile")
    most_anomalous = scores[JOINT].sort_values(frame_headline(scores[JOINT])).object_id.iloc[-1]
    assert panel.values[shuffled == most_anomalous] == 100

    unscored = [MapPanel(JOINT, IDS, np.zeros((N, 2)), None), MapPanel(IMAGE_ONLY, IDS, np.zeros((N, 2)), None)]
    assert colour_panels(tiny_run, unscored, [JOINT, IMAGE_ONLY], scores) == "log10 objects per cell"
    assert all(p.values is None for p in unscored)  # density: no values


def test_a_class_column_colours_the_maps_by_class_with_rare_classes_grouped(tiny_run, tmp_path):
    kinds = np.where(IDS % 10 == 0, "QSO", np.where(IDS % 7 == 0, "STAR", "GALAXY")).astype(object)
    kinds[3] = None
    pd.DataFrame({"TARGETID": IDS, "SPECTYPE": kinds}).to_parquet(SurveyLayout(tiny_run.path("survey")).catalog)
    config = load_config(root=tiny_run.root, sets=["data.source=survey", "analyze.figures.color_by=SPECTYPE",
                                                   f"run.models=[{JOINT}, {IMAGE_ONLY}]"])
    shuffled = IDS[::-1].copy()
    panel = MapPanel(JOINT, shuffled, np.random.default_rng(0).random((N, 2)), None)
    assert colour_panels(config, [panel], [JOINT], load_score_tables(config)) == "SPECTYPE"
    assert panel.values is None
    assert list(panel.categories) == [k if k is not None else "unknown" for k in kinds[::-1]]

    colours = umap_map._category_colours([umap_map._grouped(panel.categories)])
    assert list(colours)[0] == "GALAXY" and colours["unknown"] == "0.7"
    many = np.array([f"class{i}" for i in range(12) for _ in range(12 - i)], dtype=object)  # class0 commonest
    assert set(umap_map._grouped(many)) == {f"class{i}" for i in range(9)} | {"other"}

    path = umap_map.draw_umap_figure([panel], "SPECTYPE", 4, tmp_path / "spectype_map.png")
    assert Image.open(path).size[0] > 300


@pytest.mark.slow
def test_real_umap_keeps_two_separated_groups_apart():
    rng = np.random.default_rng(0)
    vectors = np.vstack([rng.normal(0, 1, (150, 10)), rng.normal(12, 1, (150, 10))]).astype(np.float32)
    xy = umap_map.fit_umap(vectors, SETTINGS)
    centres = xy[:150].mean(0), xy[150:].mean(0)
    spread = max(xy[:150].std(0).max(), xy[150:].std(0).max())
    assert xy.shape == (300, 2) and np.linalg.norm(centres[0] - centres[1]) > 3 * spread

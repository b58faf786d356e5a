"""The physical reference through the real pipeline (index -> adapt -> embed) on a synthetic survey
under a crowded sky: registered like any encoder, its vectors finite, its measurements physical,
its crowding covariates stored beside the embeddings (as the pixel reference's are)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fmb.config import load_config
from fmb.data.synth import synthesize
from fmb.data.synth.sky import Sky
from fmb.data.tasks import index
from fmb.embed import store
from fmb.embed.extract import embed
from fmb.errors import FmbError
from fmb.models import tasks as model_tasks
from fmb.models.base import covariate_key
from fmb.models.physical import IMAGE_FEATURES, SPECTRUM_FEATURES
from fmb.plugins import encoder_names

CROWDED = Sky(field_galaxies=2.0, neighbour_rate=0.5, blend_fraction=0.2, star_rate=0.3, edge_rate=0.1,
              nisp_correlated_noise=True, sky_residual=1.0)


def settings(model: str) -> list[str]:
    return ["data.source=survey", f"models.{model}.fit_objects=40", f"models.{model}.embed.num_workers=0",
            f"models.{model}.embed.batch_size=16", f"models.{model}.adapt.num_workers=0",
            f"models.{model}.embed.rows_per_shard=32"] + (["models.pixels.components=8", "models.pixels.image_size=16"]
                                                          if model == "pixels" else [])


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    project = tmp_path_factory.mktemp("physical")
    (project / "fmb.yaml").write_text("name: physical\n")
    summary = synthesize(project / "survey", 64, 9, anomaly_rate=0.0, sky=CROWDED, workers=1)
    return project, pq.read_table(summary["truth"]).to_pandas().set_index("object_id")


@pytest.fixture(scope="module", params=["physical", "pixels"])
def embedded(survey, request):
    project, truth = survey
    config = load_config(root=project, sets=settings(request.param))
    index(config)
    model_tasks.adapt(config, request.param)
    embed(config, request.param)
    return request.param, config, truth


def test_registered_like_any_encoder():
    assert "physical" in encoder_names()


def test_unfitted_reference_is_a_clear_error(survey):
    project, _ = survey
    config = load_config(root=project, sets=settings("physical") + ["name=unfitted"])
    index(config)
    with pytest.raises(FmbError, match="run `fmb adapt physical` first"):
        embed(config, "physical")


def test_embeddings_are_finite_with_the_described_dims(embedded):
    model, config, truth = embedded
    ids, matrices = store.load_embeddings(config.layout.embeddings(model).dir)
    assert len(ids) == len(truth)
    for modality, matrix in matrices.items():
        assert np.isfinite(matrix).all()
    if model == "physical":
        assert matrices["image"].shape[1] == len(IMAGE_FEATURES)
        assert matrices["spectrum"].shape[1] == len(SPECTRUM_FEATURES)
        assert matrices["joint"].shape[1] == len(IMAGE_FEATURES) + len(SPECTRUM_FEATURES)


def test_crowding_covariates_are_stored_beside_the_embeddings_and_follow_the_sky(embedded):
    model, config, truth = embedded
    directory = config.layout.embeddings(model).dir
    ids, covariates = store.load_covariates(directory)
    assert set(covariates) == {f"crowding_{name}" for name in ("neighbours", "neighbour_flux_ratio",
                                                             "neighbour_distance_px", "blended", "edge")}
    part = store.embedding_parts(directory)[0].path
    assert covariate_key("crowding_neighbours") in pq.read_schema(part).names
    truth = truth.loc[ids]
    crowded = (truth.sky_neighbours + truth.sky_stars).to_numpy() > 0
    detected = covariates["crowding_neighbours"]
    assert detected[crowded].mean() > detected[~crowded].mean()
    # every cutout truncated by an edge is flagged
    assert (covariates["crowding_edge"][truth.sky_edge_px.to_numpy() > 0] == 1).all()


def test_spectral_measurements_tell_passive_from_star_forming(survey):
    """D4000 is larger and H-alpha's equivalent width smaller for ellipticals (on the raw measurements)."""
    from fmb.data.index import Fetcher, ObjectIndex
    from fmb.data.sources import open_source
    from fmb.data.validate import RowChecker
    from fmb.models.physical import PhysicalPreprocessor

    project, truth = survey
    config = load_config(root=project, sets=settings("physical"))
    index(config)
    fetcher = Fetcher(open_source(config), ObjectIndex.load(config.layout.data.dir), RowChecker(config.data))
    samples = [fetcher.sample(int(i))[0] for i in truth.index]
    batch = PhysicalPreprocessor(0)(samples)
    spectrum = dict(zip(SPECTRUM_FEATURES, batch["spectrum"].numpy().T))
    elliptical = (truth.galaxy_type == "elliptical").to_numpy()
    assert elliptical.any() and (~elliptical).any()
    assert np.nanmedian(spectrum["D4000"][elliptical]) > np.nanmedian(spectrum["D4000"][~elliptical])
    assert np.nanmedian(spectrum["Halpha_ew"][elliptical]) < np.nanmedian(spectrum["Halpha_ew"][~elliptical])

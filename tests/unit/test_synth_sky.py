"""The realistic sky of `fmb data synth`: nuisances drawn at the rates the settings ask, in the
images and spectra where they belong, and a clean survey when switched off."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest

from fmb.config import load_config
from fmb.data.synth import synthesize
from fmb.data.synth.generate import Variant, get_context, make_object
from fmb.data.synth.library import get_library
from fmb.data.synth.sky import Sky, add_sky_residuals, nisp_noise

N = 192
SETTINGS = {"field_galaxies": 2.0, "neighbour_rate": 0.3, "blend_fraction": 0.5, "star_rate": 0.2, "edge_rate": 0.15,
            "nisp_correlated_noise": True, "sky_residual": 1.0}


@pytest.fixture(scope="module")
def sky_survey(tmp_path_factory):
    """A survey made by the synth task from `synth.sky.*` settings (the path `fmb data synth` takes)."""
    from fmb.data.tasks import synth

    project = tmp_path_factory.mktemp("sky")
    (project / "fmb.yaml").write_text("name: sky\n")
    sets = [f"synth.n={N}", "synth.workers=1", "synth.anomaly_rate=0", "synth.out=data/sky", "seed=5"]
    sets += [f"synth.sky.{key}={str(value).lower()}" for key, value in SETTINGS.items()]
    summary = synth(load_config(sets=sets, root=project))
    return summary, pq.read_table(summary["truth"]).to_pandas(), pq.read_table(summary["parts"][0]).to_pandas()


def test_nuisances_are_drawn_at_the_rates_of_the_settings(sky_survey):
    summary, truth, _ = sky_survey
    assert summary["sky"] == SETTINGS
    # field galaxies are Poisson, the others Bernoulli per cutout: within 4 sigma of the settings
    assert abs(truth.sky_field_galaxies.mean() - 2.0) < 4 * np.sqrt(2.0 / N)
    for column, rate in (("sky_neighbours", 0.3), ("sky_stars", 0.2), ("sky_edge_px", 0.15)):
        observed = (truth[column] > 0).mean()
        assert abs(observed - rate) < 4 * np.sqrt(rate * (1 - rate) / N), column
    assert truth.sky_neighbours.max() == 1 and truth.sky_stars.max() == 1
    blended = truth.sky_blended[truth.sky_neighbours > 0].mean()
    assert abs(blended - 0.5) < 4 * np.sqrt(0.25 / truth.sky_neighbours.sum())


def test_edges_are_blank_strips_and_the_object_stays_on_the_detector(sky_survey):
    _, truth, rows = sky_survey
    for (_, record), (_, row) in zip(truth.iterrows(), rows.iterrows()):
        vis = np.stack(row["VIS_image"]).astype(float)
        blank_columns, blank_rows = (vis == 0).all(0).sum(), (vis == 0).all(1).sum()
        assert max(blank_columns, blank_rows) == record.sky_edge_px
        assert vis[vis.shape[0] // 2, vis.shape[1] // 2] != 0


def test_blended_neighbours_send_light_down_the_fibre(sky_survey):
    _, truth, _ = sky_survey
    blended = truth[truth.sky_blended == 1].sky_fibre_light
    alone = truth[(truth.sky_neighbours == 0) & (truth.sky_stars == 0)].sky_fibre_light
    assert len(blended) and blended.median() > 0.05
    assert alone.median() < 0.02  # faint field galaxies only


def test_catalogue_fluxes_are_the_objects_not_its_neighbours():
    sky = Sky(neighbour_rate=1.0, blend_fraction=1.0, star_rate=1.0)
    rng_seed = 11
    _, clean_truth, _ = make_object(1, "none", get_context(64), np.random.default_rng(rng_seed))
    row, truth, _ = make_object(1, "none", get_context(64, Variant(sky=sky)), np.random.default_rng(rng_seed))
    assert truth["sky_neighbours"] == 1 and truth["sky_stars"] == 1
    assert truth["mag_vis"] == pytest.approx(clean_truth["mag_vis"])  # same object, same draws
    assert row["sed_data"]["flux_VIS"] == pytest.approx(3631e9 * 10 ** (-0.4 * truth["mag_vis"]), rel=1e-6)


def test_switched_off_the_survey_is_the_clean_one(tmp_path):
    from fmb.data.tasks import synth

    (tmp_path / "fmb.yaml").write_text("name: clean\n")
    sets = ["synth.n=6", "synth.workers=1", "synth.out=data/off", "synth.sky.enabled=false", "seed=3"]
    off = synth(load_config(sets=sets, root=tmp_path))
    clean = synthesize(tmp_path / "clean", 6, 3, anomaly_rate=load_config(root=tmp_path).synth.anomaly_rate, workers=1)
    # every column the sky decides (the sky coordinates come from other settings)
    observed = [name for name in pq.read_schema(off["parts"][0]).names if name not in ("ra", "dec")]
    assert pq.read_table(off["parts"][0], columns=observed).equals(pq.read_table(clean["parts"][0], columns=observed))
    assert off["sky"] == {key: (False if isinstance(value, bool) else 0.0) for key, value in SETTINGS.items()}


def test_nisp_noise_is_correlated_with_the_same_sigma():
    rng = np.random.default_rng(0)
    noise = np.stack([nisp_noise((64, 64), 2.0, rng) for _ in range(50)])
    assert noise.std() == pytest.approx(2.0, rel=0.05)
    neighbour_correlation = np.corrcoef(noise[:, :, :-1].ravel(), noise[:, :, 1:].ravel())[0, 1]
    far_correlation = np.corrcoef(noise[:, :, :-6].ravel(), noise[:, :, 6:].ravel())[0, 1]  # two native pixels
    assert neighbour_correlation > 0.5 and abs(far_correlation) < 0.05


def test_sky_line_residuals_exceed_the_pipeline_error_only_at_sky_lines():
    lib = get_library()
    ivar = lib.noise_ivar[0]
    error = np.where(ivar > 0, 1 / np.sqrt(np.where(ivar > 0, ivar, 1)), 1e3)
    chi = []
    for seed in range(40):
        flux = np.zeros_like(error)
        add_sky_residuals(flux, error, lib.desi_wave, ivar, 1.0, np.random.default_rng(seed))
        chi.append(flux / error)
    chi2 = np.square(chi).mean(0)
    sky_lines = lib.sky_pixels
    between = np.setdiff1d(np.arange(len(error)), np.concatenate([sky_lines + d for d in range(-6, 7)]))
    between = between[(between >= 0) & (between < len(error))]
    telluric = (lib.desi_wave > 7590) & (lib.desi_wave < 7640)
    between = between[~telluric[between]]
    assert chi2[sky_lines].mean() > 0.1  # residuals of order the excess error, absent from `error`
    assert np.median(chi2[between]) < 0.01 * chi2[sky_lines].mean()


def test_sky_settings_are_checked():
    with pytest.raises(ValueError, match="star_rate"):
        Sky(star_rate=1.5)

"""Variant settings of the synthetic survey (a shifted test survey): PSF width, noise level and
tracer mix each change what they say, for the same seed, and only that."""

from __future__ import annotations

import json
import typing

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from fmb.config import SynthConfig, load_config
from fmb.data.synth import synthesize
from fmb.data.synth.components import point_component
from fmb.data.synth.generate import Variant, get_context
from fmb.data.synth.population import TRACERS
from fmb.data.synth.scene import MASKED_ERROR, Scene, render
from fmb.data.synth.sed import Sed
from fmb.errors import ConfigError
from fmb.layout import SurveyLayout

N, SEED = 24, 11
BANDS = ("VIS_image", "NISP_Y_image", "NISP_J_image", "NISP_H_image")


def make(out, **variant) -> dict:
    """A small survey of normal objects (no anomalies, so every variant draws the same objects)."""
    summary = synthesize(out, N, SEED, anomaly_rate=0.0, workers=1, **variant)
    rows = pa.concat_tables([pq.read_table(path) for path in summary["parts"]])
    return {"rows": rows, "truth": pq.read_table(SurveyLayout(out).truth).to_pandas(),
            "summary": json.loads(SurveyLayout(out).summary.read_text())}


@pytest.fixture(scope="module")
def nominal(tmp_path_factory) -> dict:
    return make(tmp_path_factory.mktemp("nominal"))


def images(rows: pa.Table, column: str) -> np.ndarray:
    return np.array(rows.column(column).to_pylist(), dtype=np.float64)


def spectrum_error(rows: pa.Table) -> np.ndarray:
    return np.array(rows.column("spectrum").combine_chunks().field("error").to_pylist(), dtype=np.float64)


def background_sigma(stamps: np.ndarray, border: int = 6) -> np.ndarray:
    """Per object, the robust (MAD) sigma of the stamp's outer frame of pixels."""
    frame = np.ones(stamps.shape[1:], dtype=bool)
    frame[border:-border, border:-border] = False
    outer = stamps[:, frame]
    return 1.4826 * np.median(np.abs(outer - np.median(outer, axis=1, keepdims=True)), axis=1)


def peak_to_total(stamps: np.ndarray) -> np.ndarray:
    """Brightest pixel over total flux of each (..., H, W) stamp: lower when the light is more spread."""
    return stamps.max(axis=(-2, -1)) / stamps.sum(axis=(-2, -1))


def test_noise_scale_scales_image_and_spectrum_noise(nominal, tmp_path):
    noisy = make(tmp_path, noise_scale=2.0)
    assert noisy["summary"]["noise_scale"] == 2.0
    for column in BANDS:
        ratios = background_sigma(images(noisy["rows"], column)) / background_sigma(images(nominal["rows"], column))
        # the median over objects: the few bright galaxies that fill their stamp dilute the ratio
        assert np.median(ratios) == pytest.approx(2.0, rel=0.05), column
    error, reference = spectrum_error(noisy["rows"]), spectrum_error(nominal["rows"])
    observed = reference < MASKED_ERROR
    assert np.median(error[observed] / reference[observed]) == pytest.approx(2.0, rel=1e-6)
    # the same objects: only the observation changed
    np.testing.assert_array_equal(noisy["truth"].logm, nominal["truth"].logm)
    np.testing.assert_allclose(noisy["truth"].spec_depth, nominal["truth"].spec_depth / 4)


def test_psf_scale_widens_both_psfs_and_keeps_the_pixel_noise():
    nominal, wide = get_context(64), get_context(64, Variant(psf_scale=1.5))
    for sharp, blurred in zip(nominal.optics.psfs, wide.optics.psfs):  # VIS, NISP
        ratio = blurred.calculateFWHM(scale=0.005) / sharp.calculateFWHM(scale=0.005)
        assert ratio == pytest.approx(1.5, rel=1e-3)
    assert wide.optics.fwhm == pytest.approx((0.255, 0.72))
    star = Scene([point_component("star", Sed(np.zeros(7781), np.ones(4)))])
    sharp, blurred = (peak_to_total(render(star, ctx.optics).model) for ctx in (nominal, wide))
    assert (blurred < 0.7 * sharp).all(), blurred / sharp  # every band
    np.testing.assert_array_equal(wide.optics.noise_adu, nominal.optics.noise_adu)


def test_psf_scale_spreads_every_objects_light(tmp_path):
    """Nearly noise-free surveys, so the VIS peak-to-total ratio of each object is the model's."""
    quiet = {"noise_scale": 1e-3}
    sharp = make(tmp_path / "sharp", **quiet)
    blurred = make(tmp_path / "blurred", psf_scale=1.5, **quiet)
    assert blurred["summary"]["psf_scale"] == 1.5
    ratios = peak_to_total(images(blurred["rows"], "VIS_image")) / peak_to_total(images(sharp["rows"], "VIS_image"))
    assert (ratios < 1).all() and np.median(ratios) < 0.9, ratios


def test_population_mix_picks_the_tracers(nominal, tmp_path):
    assert nominal["truth"].tracer.nunique() > 1
    lrg = make(tmp_path, population_mix={"LRG": 1})
    assert set(lrg["truth"].tracer) == {"LRG"}
    assert lrg["summary"]["population_mix"] == {"BGS": 0.0, "LRG": 1.0, "ELG": 0.0}
    assert nominal["summary"]["population_mix"] == {name: fraction for name, (fraction, _) in TRACERS.items()}


@pytest.mark.parametrize("mix, message", [({"QSO": 1}, "QSO"), ({"LRG": -1}, "positive sum|>= 0"),
                                          ({"LRG": 0}, "positive sum")])
def test_bad_population_mix_is_a_clear_error(tmp_path, mix, message):
    with pytest.raises(ValueError, match=message):
        synthesize(tmp_path, 4, population_mix=mix)
    with pytest.raises(ValidationError, match=message):
        SynthConfig(population_mix=mix)


def test_config_mix_is_renormalised_and_names_the_tracers_of_the_population(project):
    assert SynthConfig(population_mix={"LRG": 3, "ELG": 1}).population_mix == {"LRG": 0.75, "ELG": 0.25}
    mix_type = typing.get_args(SynthConfig.model_fields["population_mix"].annotation)[0]  # dict[Literal, float]
    assert set(typing.get_args(typing.get_args(mix_type)[0])) == set(TRACERS)
    with pytest.raises(ConfigError, match=r"synth\.population_mix\.QSO"):
        load_config(sets=["synth.population_mix={QSO: 1}"], root=project)


def test_the_synth_task_passes_the_variant_on(project):
    from fmb.data.tasks import synth

    sets = ["synth.n=4", "synth.workers=1", "synth.anomaly_rate=0", "synth.psf_scale=1.5", "synth.noise_scale=2",
            "synth.population_mix={ELG: 2}"]
    summary = synth(load_config(sets=sets, root=project))
    assert (summary["psf_scale"], summary["noise_scale"]) == (1.5, 2.0)
    assert summary["population_mix"] == {"BGS": 0.0, "LRG": 0.0, "ELG": 1.0}


@pytest.mark.parametrize("setting", ["psf_scale", "noise_scale"])
def test_scales_must_be_positive(tmp_path, setting):
    with pytest.raises(ValueError, match=setting):
        synthesize(tmp_path, 4, **{setting: 0.0})
    with pytest.raises(ValidationError, match=setting):
        SynthConfig(**{setting: -1.0})

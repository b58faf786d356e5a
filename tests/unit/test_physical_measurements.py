"""Each physical measurement on synthetic inputs of known value: spectra with a known break, line
and absorption index; GalSim Sersic profiles of known index and size; a cutout with a known
neighbour."""

from __future__ import annotations

import galsim
import numpy as np
import pytest

from fmb.data.schema import desi_wavelength
from fmb.models.measure.deblend import COVARIATES, find_central
from fmb.models.measure.morphology import FEATURES, measure_central
from fmb.models.measure.spectral import INDICES, feature_names, measure_spectra

WAVE = desi_wavelength().astype(np.float64)
Z = np.array([0.1, 0.3, 0.45])


def spectra(fnu_break: float = 1.0, line_flux: float = 0.0, line_sigma: float = 2.0, noise: float = 0.0, seed: int = 0):
    """f_lambda of a continuum flat in f_nu with a step of `fnu_break` at 3975 A rest, plus a Gaussian
    H-alpha of `line_flux` (1e-17 erg/s/cm^2) and rest sigma `line_sigma` A; (flux, ivar, continuum)."""
    rest = WAVE[None] / (1 + Z[:, None])
    continuum = np.where(rest < 3975, 1.0, fnu_break) / WAVE[None] ** 2 * 1e8
    centre, sigma = 6564.6 * (1 + Z[:, None]), line_sigma * (1 + Z[:, None])
    line = line_flux / np.sqrt(2 * np.pi) / sigma * np.exp(-0.5 * ((WAVE[None] - centre) / sigma) ** 2)
    flux = continuum + line + np.random.default_rng(seed).normal(0, noise, continuum.shape) if noise else continuum + line
    return flux, np.full(flux.shape, 1 / max(noise, 1e-4) ** 2), continuum


def measured(flux, ivar) -> dict[str, np.ndarray]:
    return dict(zip(feature_names(), measure_spectra(flux, ivar, WAVE, Z).T))


@pytest.mark.parametrize("step", [1.0, 1.3, 2.0])
def test_d4000_is_the_break_in_f_nu(step):
    assert measured(*spectra(fnu_break=step)[:2])["D4000"] == pytest.approx(step, rel=1e-3)


def test_what_falls_outside_the_spectrum_is_not_measured():
    flux, ivar, _ = spectra(line_flux=40.0)
    far = dict(zip(feature_names(), measure_spectra(flux, ivar, WAVE, np.array([0.0, 0.6, np.nan])).T))
    assert np.isfinite(far["Halpha_ew"][0]) and np.isnan(far["Halpha_ew"][1])  # beyond the red end at z = 0.6
    assert np.isnan([value[2] for value in far.values()]).all()  # no redshift: nothing


def test_halpha_flux_equivalent_width_and_width():
    flux, ivar, continuum = spectra(line_flux=40.0, line_sigma=2.0)
    m = measured(flux, ivar)
    continuum_at_line = np.array([np.interp(6564.6 * (1 + z), WAVE, row) for z, row in zip(Z, continuum)])
    expected_ew = 40.0 / continuum_at_line / (1 + Z)  # rest-frame EW
    assert 10 ** m["Halpha_log_flux"] == pytest.approx(40.0, rel=0.01)
    assert m["Halpha_ew"] == pytest.approx(expected_ew, rel=0.01)
    assert m["Halpha_sigma_kms"] == pytest.approx(2.0 / 6564.6 * 299_792.458, rel=0.03)
    assert np.abs(m["Halpha_offset_kms"]).max() < 2 and np.abs(m["Halpha_skew"]).max() < 0.1


def halpha_error(noise: float) -> np.ndarray:
    """The H-alpha flux's 1-sigma error at each Z: noise x sqrt(sum of the window's pixel widths^2)."""
    step = np.gradient(WAVE)
    return np.array([noise * np.sqrt((step[(WAVE >= 6557 * (1 + z)) & (WAVE < 6572 * (1 + z))] ** 2).sum()) for z in Z])


def test_an_undetected_line_carries_no_measurement_and_a_detected_one_keeps_its_own():
    """Noise 0.05 a pixel. Without H-alpha: its flux is the 3-sigma upper limit, its EW 0 (absent), its
    width and shape not measured (NaN: the reference's neutral median), and the ratio of two undetected
    lines not measured. H-alpha at 10 sigma: its flux, width and a ratio against an undetected [NII]."""
    error = halpha_error(0.05)
    flux, ivar, _ = spectra(line_flux=0.0, noise=0.05, seed=3)
    absent = measured(flux, ivar)
    assert 10 ** absent["Halpha_log_flux"] == pytest.approx(3 * error, rel=1e-6)
    assert (absent["Halpha_ew"] == 0).all()
    assert np.isnan([absent[f"Halpha_{shape}"] for shape in ("sigma_kms", "offset_kms", "skew")]).all()
    assert np.isnan(absent["log_NII_6585_Halpha"]).all()
    flux, ivar, _ = spectra(line_flux=10 * error[:, None], noise=0.05, seed=3)
    present = measured(flux, ivar)
    assert 10 ** present["Halpha_log_flux"] == pytest.approx(10 * error, rel=0.2)
    assert (present["Halpha_ew"] > 0).all() and np.isfinite(present["Halpha_sigma_kms"]).all()
    assert (present["log_NII_6585_Halpha"] < 0).all()  # a limit: [NII] below 3 sigma, H-alpha at 10


def test_lick_index_is_the_equivalent_width_of_its_band():
    """A flat f_lambda continuum with the HdeltaA central band 20 % deep: EW = 0.2 x its width (an
    index whose pseudo-continua do not overlap its central band)."""
    index = next(i for i in INDICES if i.name == "HdeltaA")
    rest = WAVE[None] / (1 + Z[:, None])
    flux = np.where((rest >= index.central[0]) & (rest < index.central[1]), 0.8, 1.0)
    values = measured(flux, np.ones_like(flux))["HdeltaA"]
    assert values == pytest.approx(0.2 * (index.central[1] - index.central[0]), rel=0.02)


def sersic_cutout(n: float, half_light_px: float, flux: float = 3e4, noise: float = 1.0, seed: int = 0,
                  shear: float = 0.0) -> np.ndarray:
    profile = galsim.Sersic(n, half_light_radius=half_light_px * 0.1, flux=flux)
    if shear:
        profile = profile.shear(g1=shear, g2=0)
    image = galsim.Convolve(profile, galsim.Gaussian(fwhm=0.17)).drawImage(nx=64, ny=64, scale=0.1).array
    return np.stack([image] * 4).astype(np.float64) + np.random.default_rng(seed).normal(0, noise, (4, 64, 64))


def morphology(bands: np.ndarray) -> dict[str, float]:
    return dict(zip(FEATURES, measure_central(bands, find_central(bands))))


@pytest.mark.parametrize("n, tolerance, radius_tolerance", [(1.0, 0.3, 0.1), (2.0, 0.5, 0.1), (4.0, 1.0, 0.35)])
def test_sersic_index_and_effective_radius(n, tolerance, radius_tolerance):
    """Recovered within the tolerances; a de Vaucouleurs profile 6 px across loses part of its wings
    to the local background (and to the PSF), which biases n and r50 low (documented, morphology.py)."""
    m = morphology(sersic_cutout(n, 6.0))
    assert m["sersic_n"] == pytest.approx(n, abs=tolerance)
    assert 10 ** m["log_r_e"] == pytest.approx(6.0, rel=radius_tolerance)
    assert 10 ** m["log_r50"] == pytest.approx(6.0, rel=radius_tolerance)


def test_concentration_gini_and_m20_order_discs_and_spheroids():
    disc, spheroid = morphology(sersic_cutout(1.0, 6.0)), morphology(sersic_cutout(4.0, 6.0))
    assert 2.4 < disc["concentration"] < 3.2 < spheroid["concentration"]  # C(n=1) ~ 2.7, C(n=4) ~ 5 untruncated
    assert spheroid["gini"] > disc["gini"] and spheroid["m20"] < disc["m20"]


def test_asymmetry_is_zero_for_a_symmetric_source_and_the_clumps_share_for_a_lopsided_one():
    """A clump of flux C beside a symmetric source of flux F: |I - I_180| is C on the clump and C on
    its mirror, so A = 2 C / (2 (F + C)). The clump pulls the centroid by more than half a pixel; A
    is measured at the centre that minimises it, the source's own."""
    symmetric = sersic_cutout(1.0, 5.0)
    lopsided = symmetric.copy()
    lopsided[:, 32:40, 36:44] += 40.0  # a bright clump on one side
    clump, source = 40.0 * 64, 3e4
    assert abs(morphology(symmetric)["asymmetry"]) < 0.03
    assert morphology(lopsided)["asymmetry"] == pytest.approx(clump / (source + clump), rel=0.1)


def test_the_noise_is_the_skys_whatever_bright_source_shares_the_cutout():
    """Noise sigma 1: a field star's wings would inflate a sigma over all pixels; the sky's, off every
    source after the local background, stays at 1 within its ~2.5 % error (the asymmetry's noise term and the flux floors)."""
    bands = sersic_cutout(1.0, 4.0, noise=1.0)
    star = galsim.Moffat(beta=2.5, fwhm=0.17, flux=3e5).shift(1.8, -1.5)
    bands += galsim.Convolve(star, galsim.Gaussian(fwhm=0.05)).drawImage(nx=64, ny=64, scale=0.1).array[None]
    central = find_central(bands)
    assert central.covariates[COVARIATES.index("neighbours")] >= 1
    assert central.noise == pytest.approx(1.0, rel=0.08)  # over all pixels: 1.75


def test_photometry_and_ellipticity():
    bands = sersic_cutout(1.0, 4.0, flux=2e4, shear=0.3)
    bands[1] *= 2.0  # Y twice as bright as VIS: VIS - Y = 2.5 log10 2 mag
    m = morphology(bands)
    assert 10 ** m["log_flux_vis"] == pytest.approx(2e4, rel=0.05)
    assert m["colour_vis_y"] == pytest.approx(2.5 * np.log10(2), abs=0.02)
    q = (1 - 0.3) / (1 + 0.3)  # axis ratio of a shear g
    assert m["ellipticity"] == pytest.approx(1 - q, abs=0.1)


def test_deblending_counts_a_neighbour_and_masks_it():
    galaxy = sersic_cutout(1.0, 4.0, flux=2e4)
    star = galsim.Gaussian(fwhm=0.17, flux=4e4).shift(1.8, -0.6)
    crowded = galaxy + star.drawImage(nx=64, ny=64, scale=0.1).array[None]
    central = find_central(crowded)
    covariates = dict(zip(COVARIATES, central.covariates))
    assert covariates["neighbours"] == 1 and covariates["edge"] == 0
    assert covariates["neighbour_distance_px"] == pytest.approx(np.hypot(18, 6), abs=1.5)
    assert 1.2 < covariates["neighbour_flux_ratio"] < 3.0  # the star's detected flux over the galaxy's
    assert central.neighbours[int(31.5 - 6), int(31.5 + 18)] and not central.neighbours[32, 32]
    assert morphology(crowded)["log_flux_vis"] == pytest.approx(morphology(galaxy)["log_flux_vis"], abs=0.03)


def test_a_detector_edge_is_flagged():
    bands = sersic_cutout(1.0, 3.0)
    bands[:, :, :12] = 0.0
    assert dict(zip(COVARIATES, find_central(bands).covariates))["edge"] == 1


def crowded_cutout() -> np.ndarray:
    """A galaxy with a bright neighbour and a detector edge: replaced pixels on both sides."""
    bands = sersic_cutout(1.0, 5.0, flux=2e4) + galsim.Gaussian(fwhm=0.17, flux=4e4).shift(1.5, -0.8).drawImage(
        nx=64, ny=64, scale=0.1).array[None]
    bands[:, :, :6] = 0.0
    return bands


def test_cleaned_sums_are_the_sums_of_the_cleaned_bands():
    bands = crowded_cutout()
    central = find_central(bands)
    assert central.neighbours.any() and central.blank.any()
    y, x = np.mgrid[0:64, 0:64]
    for radius in (5, 12, 30):
        region = np.hypot(x - central.centre[0], y - central.centre[1]) <= radius
        assert central.cleaned_sums(bands, region) == pytest.approx(central.cleaned(bands)[:, region].sum(1), rel=1e-12)


def test_asymmetry_about_each_of_the_nine_centres_is_the_symmetric_mask_formula():
    """The vectorised asymmetries against the formula written out on the whole cutout, per centre."""
    from fmb.models.measure.morphology import _asymmetry_per_centre

    bands = crowded_cutout()
    central = find_central(bands)
    image = central.cleaned(bands)[0]
    y, x = np.mgrid[0:64, 0:64]
    aperture = np.hypot(x - central.centre[0], y - central.centre[1]) <= 14
    usable = aperture & ~(central.neighbours | central.blank)
    values = []
    for twice_y in np.arange(-1, 2) + int(round(2 * central.centre[1])):
        for twice_x in np.arange(-1, 2) + int(round(2 * central.centre[0])):
            my, mx = twice_y - y, twice_x - x
            on = (my >= 0) & (my < 64) & (mx >= 0) & (mx < 64)
            pair = usable & on & usable[np.clip(my, 0, 63), np.clip(mx, 0, 63)]
            mirror = image[np.clip(my, 0, 63), np.clip(mx, 0, 63)]
            noise = pair.sum() * 2 * central.noise[0] / np.sqrt(np.pi)
            values.append((np.abs(image - mirror)[pair].sum() - noise) / (2 * np.abs(image[pair]).sum()))
    assert _asymmetry_per_centre(image, central, aperture) == pytest.approx(values, rel=1e-10)


@pytest.mark.parametrize("size", [2, 3, 4, 7])
def test_boxcar_mean_is_scipys_uniform_filter(size):
    from scipy.ndimage import uniform_filter

    from fmb.models.measure.morphology import _boxcar_mean

    image = np.random.default_rng(size).normal(0, 50, (23, 31))
    assert np.allclose(_boxcar_mean(image, size), uniform_filter(image, size=size, mode="constant"), rtol=0, atol=1e-11)


def test_spectra_on_their_own_grids_measure_as_one_at_a_time():
    flux, ivar, _ = spectra(fnu_break=1.5, line_flux=30.0, noise=0.02)
    grids = WAVE[None] + np.array([0.0, 0.3, -0.2])[:, None]  # three different grids
    together = measure_spectra(flux, ivar, grids, Z)
    alone = np.stack([measure_spectra(flux[k:k + 1], ivar[k:k + 1], grids[k], Z[k:k + 1])[0] for k in range(3)])
    assert np.allclose(together, alone, rtol=1e-12, equal_nan=True)

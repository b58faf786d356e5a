"""The pixel reference's features: binned noise-weighted spectra with their level apart, and aperture photometry."""

import numpy as np
import pytest
import torch

from fmb.models.pixels import PixelsEncoder, PixelsSection, _binned_shape


def _spectrum(rng: np.random.Generator, length: int = 7781) -> tuple[np.ndarray, np.ndarray]:
    wavelength = np.linspace(3600, 9824, length)
    flux = 2.0 + wavelength / 5000 + rng.normal(0, 0.1, length)  # a red continuum with noise
    return flux.astype(np.float32), np.full(length, 100.0, dtype=np.float32)


def test_features_keep_the_shape_and_drop_the_brightness():
    flux, ivar = _spectrum(np.random.default_rng(0))
    features, level, _ = _binned_shape(flux, ivar)
    brighter, brighter_level, _ = _binned_shape(10 * flux, ivar / 100)
    assert features.shape == (7781 // 4,)
    assert np.allclose(brighter, features, atol=1e-5) and brighter_level == pytest.approx(10 * level)
    assert abs(np.median(np.abs(features)) - 1) < 1e-3  # the median level is the unit
    assert features[-50:].mean() > features[:50].mean() * 1.3  # the red slope (x1.45) survives


def test_bins_are_inverse_variance_weighted_and_masked_pixels_ignored():
    flux, ivar = _spectrum(np.random.default_rng(1))
    reference, _, _ = _binned_shape(flux, ivar)
    flux[:6] = 1e6  # garbage: masked (ivar 0) in the first bin, nearly zero weight in half the second
    ivar[:4] = 0
    ivar[4:6] = 1e-12
    features, _, _ = _binned_shape(flux, ivar)
    assert features[0] == 0  # an empty bin is 0, not NaN
    assert abs(features[1] - reference[1]) < 0.1 * reference[1]
    assert np.allclose(features[2:], reference[2:], rtol=1e-3)


def test_a_fully_masked_spectrum_gives_zeros():
    flux, _ = _spectrum(np.random.default_rng(2))
    assert not _binned_shape(flux, np.zeros_like(flux))[0].any()


def test_the_last_spectrum_dimension_is_the_level_and_only_it_sees_brightness():
    rng = np.random.default_rng(3)
    encoder = PixelsEncoder(PixelsSection(image_size=8, components=6))
    spectra = [_spectrum(rng) for _ in range(40)]
    scales = 10 ** rng.uniform(-1, 1, len(spectra))
    shapes, levels, bin_ivars = zip(*(_binned_shape(f * k, iv / k**2) for (f, iv), k in zip(spectra, scales)))
    batch = {"image": torch.randn(len(spectra), 4 * 64), "image_log_flux": torch.randn(len(spectra), 4),
             "image_noise_variance": torch.full((len(spectra),), 0.25), "crowding": torch.zeros(len(spectra), 5),
             "spectrum": torch.from_numpy(np.stack(shapes)), "spectrum_ivar": torch.from_numpy(np.stack(bin_ivars)),
             "spectrum_log_level": torch.tensor(np.log10(levels), dtype=torch.float32)[:, None]}
    encoder.fit(batch)
    spectrum = encoder.embed(batch)["spectrum"]
    assert spectrum.shape == (40, 6)
    assert np.corrcoef(spectrum[:, -1], np.log10(scales))[0, 1] > 0.999
    assert abs(np.corrcoef(spectrum[:, 0], np.log10(scales))[0, 1]) < 0.5


def test_image_photometry_follows_each_band_and_is_floored_at_the_noise():
    rng = np.random.default_rng(4)
    y, x = np.mgrid[:32, :32] - 15.5
    galaxy = np.exp(-(x**2 + y**2) / 8.0)
    bands = np.stack([k * galaxy for k in (100.0, 200.0, 400.0, 0.0)]) + rng.normal(0, 1, (4, 32, 32))
    preprocessor = PixelsEncoder(PixelsSection(image_size=8, components=6)).preprocessor
    _, log_flux, _ = preprocessor._image(bands.astype(np.float32))
    assert np.allclose(np.diff(log_flux[:3].numpy()), np.log10(2), atol=0.01)  # colours: x2 per band
    assert abs(log_flux[0].item() - np.log10(100 * galaxy.sum())) < 0.02  # nearly all light in the aperture
    assert np.isfinite(log_flux[3].item()) and log_flux[3] < log_flux[0] - 1  # empty band: the noise floor


def test_spectrum_residual_is_a_chi2_per_bin_and_sees_what_the_components_miss():
    """Spectra from three continuum shapes plus Gaussian noise of known ivar: what the PCA cannot
    hold is the noise, so chi^2 per bin is ~1; a line the components never saw raises it."""
    rng = np.random.default_rng(5)
    wavelength = np.linspace(3600, 9824, 7781)
    shapes = np.stack([2.0 + wavelength / 5000, 3.0 - wavelength / 8000, 1.0 + np.sin(wavelength / 700)])
    sigma = 0.05
    spectra = [(rng.uniform(0.5, 1.5, 3) @ shapes + rng.normal(0, sigma, 7781)).astype(np.float32) for _ in range(200)]
    ivar = np.full(7781, 1 / sigma**2, dtype=np.float32)
    spectra[0][3000:3012] += 2.0  # an emission line the population lacks
    encoder = PixelsEncoder(PixelsSection(image_size=8, components=8))
    binned = [_binned_shape(flux, ivar) for flux in spectra]
    batch = {"image": torch.randn(len(spectra), 4 * 64), "image_log_flux": torch.randn(len(spectra), 4),
             "image_noise_variance": torch.full((len(spectra),), 0.25), "crowding": torch.zeros(len(spectra), 5),
             "spectrum": torch.from_numpy(np.stack([b[0] for b in binned])),
             "spectrum_ivar": torch.from_numpy(np.stack([b[2] for b in binned])),
             "spectrum_log_level": torch.tensor(np.log10([b[1] for b in binned]), dtype=torch.float32)[:, None]}
    encoder.fit(batch)
    chi2 = encoder.embed(batch)["spectrum_residual"].numpy()
    assert np.median(chi2[1:]) == pytest.approx(1.0, rel=0.1)
    assert chi2[0] > 1.5 and chi2.argmax() == 0

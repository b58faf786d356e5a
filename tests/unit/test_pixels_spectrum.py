"""The pixel reference's spectrum features: binned, noise-weighted, shape kept, brightness removed."""

import numpy as np

from fmb.models.pixels import _binned_shape


def _spectrum(rng: np.random.Generator, length: int = 7781) -> tuple[np.ndarray, np.ndarray]:
    wavelength = np.linspace(3600, 9824, length)
    flux = 2.0 + wavelength / 5000 + rng.normal(0, 0.1, length)  # a red continuum with noise
    return flux.astype(np.float32), np.full(length, 100.0, dtype=np.float32)


def test_features_keep_the_shape_and_drop_the_brightness():
    flux, ivar = _spectrum(np.random.default_rng(0))
    features = _binned_shape(flux, ivar)
    assert features.shape == (7781 // 4,)
    assert np.allclose(_binned_shape(10 * flux, ivar / 100), features, atol=1e-5)
    assert abs(np.median(np.abs(features)) - 1) < 1e-3  # the median level is the unit
    assert features[-50:].mean() > features[:50].mean() * 1.3  # the red slope (x1.45) survives


def test_bins_are_inverse_variance_weighted_and_masked_pixels_ignored():
    flux, ivar = _spectrum(np.random.default_rng(1))
    reference = _binned_shape(flux, ivar)
    flux[:6] = 1e6  # garbage: masked (ivar 0) in the first bin, nearly zero weight in half the second
    ivar[:4] = 0
    ivar[4:6] = 1e-12
    features = _binned_shape(flux, ivar)
    assert features[0] == 0  # an empty bin is 0, not NaN
    assert abs(features[1] - reference[1]) < 0.1 * reference[1]
    assert np.allclose(features[2:], reference[2:], rtol=1e-3)


def test_a_fully_masked_spectrum_gives_zeros():
    flux, _ = _spectrum(np.random.default_rng(2))
    assert not _binned_shape(flux, np.zeros_like(flux)).any()

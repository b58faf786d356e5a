"""Spectrum display helpers: rest-frame conversion, smoothing, labelled emission lines."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

#: Rest-frame vacuum-ish wavelengths (Angstrom). A list, not a dict: doublets keep both members.
EMISSION_LINES: list[tuple[str, float]] = [
    ("Lya", 1215.7),
    ("C IV", 1549.0),
    ("C III]", 1908.7),
    ("Mg II", 2798.0),
    ("[O II]", 3727.4),
    ("[Ne III]", 3869.8),
    ("Hd", 4102.9),
    ("Hg", 4341.7),
    ("Hb", 4862.7),
    ("[O III]", 4960.3),
    ("[O III]", 5008.2),
    ("[N II]", 6549.9),
    ("Ha", 6564.6),
    ("[N II]", 6585.3),
    ("[S II]", 6718.3),
    ("[S II]", 6732.7),
]
#: Stellar absorption features worth marking on passive galaxies.
ABSORPTION_LINES: list[tuple[str, float]] = [("Ca K", 3934.8), ("Ca H", 3969.6), ("G", 4305.0), ("Mg b", 5176.7), ("Na D", 5895.6)]


def rest_frame(wavelength: np.ndarray, redshift: float) -> np.ndarray:
    """Observed wavelengths divided by 1+z (unchanged when z is unknown)."""
    return wavelength / (1 + redshift) if np.isfinite(redshift) and redshift > -1 else wavelength


def smooth(flux: np.ndarray, ivar: np.ndarray, sigma_px: float) -> np.ndarray:
    """Inverse-variance weighted Gaussian smoothing; masked pixels (ivar 0) carry no weight."""
    if sigma_px <= 0:
        return np.where(ivar > 0, flux, np.nan)
    weight = gaussian_filter1d(ivar.astype(np.float64), sigma_px)
    smoothed = gaussian_filter1d((flux * ivar).astype(np.float64), sigma_px)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(weight > 0, smoothed / weight, np.nan)


def lines_in_range(lines: list[tuple[str, float]], low: float, high: float) -> list[tuple[str, float]]:
    return [(name, wave) for name, wave in lines if low <= wave <= high]

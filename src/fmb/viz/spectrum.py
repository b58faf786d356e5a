"""The spectrum panel, the one drawing of a spectrum in fmb (the app, the report's galleries and
`fmb data show` all draw it with `draw_spectrum`), and its helpers: rest-frame conversion, smoothing,
labelled emission and absorption lines."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import gaussian_filter1d

from fmb.viz.style import blank

FRAMES = ("observed", "rest")

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


def known_redshift(redshift: float) -> bool:
    """Whether a redshift can place the rest frame (finite, above -1)."""
    return bool(np.isfinite(redshift) and redshift > -1)


def rest_frame(wavelength: np.ndarray, redshift: float) -> np.ndarray:
    """Observed wavelengths divided by 1+z (unchanged when z is unknown)."""
    return wavelength / (1 + redshift) if known_redshift(redshift) else wavelength


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


def draw_spectrum(axis, sample, smooth_px: float, *, frame: str = "rest",
                  wave_range: tuple[float | None, float | None] = (None, None), compact: bool = False) -> None:
    """Flux (grey) with its 1-sigma errors shaded, the inverse-variance smoothed flux (black), and the
    lines at the object's redshift, on a rest-frame axis when the redshift is known and `frame` is
    "rest" (else observed, with the rest frame on a top axis for the lines). `wave_range` (A, in the
    axis's frame; None for an open end) zooms in: the flux scale follows what is shown. `compact` (for
    galleries) drops the legend, the flux ticks and the line labels. `sample` is anything shaped like
    `fmb.data.validate.Sample` (object_id, redshift, spectrum): viz imports nothing of the stages."""
    spectrum = sample.spectrum
    if spectrum is None:
        blank(axis, "no spectrum")
        return
    if frame not in FRAMES:
        raise ValueError(f"unknown frame {frame!r}; one of {', '.join(FRAMES)}")
    known_z = known_redshift(sample.redshift)
    factor = 1 + sample.redshift if known_z and frame == "rest" else 1.0
    wave = spectrum.wavelength.astype(np.float64) / factor
    flux = np.where(spectrum.mask, np.nan, spectrum.flux)
    error = np.where(np.isfinite(spectrum.error), spectrum.error, np.nan)
    smoothed = smooth(spectrum.flux, spectrum.ivar, smooth_px)
    low, high = _shown_range(wave, wave_range)
    axis.fill_between(wave, flux - error, flux + error, color="0.85", lw=0, label="1-sigma error")
    axis.plot(wave, flux, color="0.6", lw=0.4, label="flux")
    axis.plot(wave, smoothed, color="k", lw=0.8, label=f"smoothed ({smooth_px:g} px)")
    limit_flux_axis(axis, smoothed[(wave >= low) & (wave <= high)])
    axis.set_xlim(low, high)
    axis.set_xlabel(f"{'rest-frame' if factor != 1 else 'observed'} wavelength (A)")
    if known_z:
        lines_axis = axis if factor != 1 else _rest_frame_axis(axis, 1 + sample.redshift)
        mark_lines(lines_axis, *lines_axis.get_xlim(), labels=not compact)
    if compact:
        axis.tick_params(labelsize=7)
        axis.set_yticks([])
        return
    axis.set_ylabel("flux (1e-17 erg/s/cm2/A)")
    axis.legend(loc="upper right")


def _shown_range(wave: np.ndarray, wanted: tuple[float | None, float | None]) -> tuple[float, float]:
    """The wavelength range to show: `wanted` within the spectrum's, the whole spectrum when it
    leaves less than two pixels."""
    low = max(wave.min(), wanted[0]) if wanted[0] is not None else wave.min()
    high = min(wave.max(), wanted[1]) if wanted[1] is not None else wave.max()
    if np.count_nonzero((wave >= low) & (wave <= high)) < 2:
        return float(wave.min()), float(wave.max())
    return float(low), float(high)


def _rest_frame_axis(axis, one_plus_z: float):
    """A top x axis in rest-frame wavelength over an observed-frame axis."""
    low, high = axis.get_xlim()
    top = axis.twiny()
    top.set_xlim(low / one_plus_z, high / one_plus_z)
    top.set_xlabel("rest-frame wavelength (A)")
    return top


def limit_flux_axis(axis, smoothed: np.ndarray) -> None:
    """Room for the line labels above the smoothed flux; spikes of single pixels do not set the scale."""
    finite = smoothed[np.isfinite(smoothed)]
    if finite.size:
        low, high = np.percentile(finite, [0.5, 99.8])
        pad = 0.15 * (high - low + 1e-12)
        axis.set_ylim(low - pad, high + 3 * pad)


def mark_lines(axis, low: float, high: float, *, labels: bool = True) -> None:
    """Emission lines (blue, dashed) and absorption lines (red, dotted) between `low` and `high` (A)."""
    top = axis.get_ylim()[1]
    labelled: list[float] = []
    for name, wave in lines_in_range(EMISSION_LINES, low, high):
        axis.axvline(wave, color="tab:blue", ls="--", lw=0.6, alpha=0.7)
        if labels and all(abs(wave - other) > 0.012 * (high - low) for other in labelled):  # no overlapping labels
            axis.text(wave, top, f" {name}", rotation=90, va="top", ha="center", fontsize=8, color="tab:blue")
            labelled.append(wave)
    for name, wave in lines_in_range(ABSORPTION_LINES, low, high):
        axis.axvline(wave, color="tab:red", ls=":", lw=0.6, alpha=0.6)
        if labels:
            axis.text(wave, axis.get_ylim()[0], f" {name}", rotation=90, va="bottom", ha="center", fontsize=7, color="tab:red")

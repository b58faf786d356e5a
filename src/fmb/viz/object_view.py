"""Single-object view: RGB composite, the four Euclid bands, and the rest-frame spectrum.

A `Sample` here is anything with the attributes of `fmb.data.validate.Sample` (object_id, redshift,
rgb, bands, spectrum): viz is a leaf library and imports nothing of the stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

Sample = Any  # duck-typed: fmb.data.validate.Sample or anything shaped like it
from fmb.viz.spectrum import ABSORPTION_LINES, EMISSION_LINES, lines_in_range, rest_frame, smooth
from fmb.viz.style import fmb_style, save_figure


def draw_object(sample: Sample, path: Path, band_names: tuple[str, ...], *, smooth_px: float = 2.0,
                title_extra: str = "") -> Path:
    """Write the single-object figure to `path` (PNG) and return it."""
    with fmb_style():
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(13, 6.2))
        grid = figure.add_gridspec(2, 5, height_ratios=[1, 1.15], hspace=0.3, wspace=0.08)
        draw_rgb(figure.add_subplot(grid[0, 0]), sample)
        for column, name in enumerate(band_names, start=1):
            _draw_band(figure.add_subplot(grid[0, column]), sample, column - 1, name)
        draw_spectrum(figure.add_subplot(grid[1, :]), sample, smooth_px)
        redshift = f"z = {sample.redshift:.4f}" if np.isfinite(sample.redshift) else "z unknown"
        figure.suptitle(f"Object {sample.object_id}   {redshift}{title_extra}", fontsize=13, y=0.98)
        save_figure(figure, path)
    return path


def blank(axis, message: str) -> None:
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes, color="0.4")
    axis.set_xticks([])
    axis.set_yticks([])


def draw_rgb(axis, sample: Sample) -> None:
    axis.set_title("RGB (H, Y, VIS)")
    if sample.rgb is None:
        blank(axis, "no RGB image")
        return
    axis.imshow(sample.rgb, origin="upper")
    axis.set_xticks([])
    axis.set_yticks([])


def _draw_band(axis, sample: Sample, index: int, name: str) -> None:
    axis.set_title(name if name == "VIS" else f"NISP {name}")
    if sample.bands is None:
        blank(axis, "no band image")
        return
    band = sample.bands[index]
    low, high = np.percentile(band, [1, 99.5])
    scale = max(high - low, 1e-12)
    stretched = np.arcsinh(np.clip((band - low) / scale, 0, None) * 10) / np.arcsinh(10)
    axis.imshow(stretched, origin="upper", cmap="magma", vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])


def draw_spectrum(axis, sample: Sample, smooth_px: float, *, compact: bool = False) -> None:
    """Observed (grey) and smoothed (black) flux in the rest frame, with the lines marked;
    `compact` (for galleries) drops the legend and the line labels."""
    spectrum = sample.spectrum
    if spectrum is None:
        blank(axis, "no spectrum")
        return
    known_z = np.isfinite(sample.redshift)
    wave = rest_frame(spectrum.wavelength.astype(np.float64), sample.redshift)
    raw = np.where(spectrum.mask, np.nan, spectrum.flux)
    smoothed = smooth(spectrum.flux, spectrum.ivar, smooth_px)
    axis.plot(wave, raw, color="0.78", lw=0.4, label="observed")
    axis.plot(wave, smoothed, color="k", lw=0.8, label=f"smoothed ({smooth_px:g} px)")
    limit_flux_axis(axis, smoothed)
    if known_z:
        mark_lines(axis, wave.min(), wave.max(), labels=not compact)
    axis.set_xlim(wave.min(), wave.max())
    axis.set_xlabel("rest-frame wavelength (A)" if known_z else "observed wavelength (A)")
    if compact:
        axis.tick_params(labelsize=7)
        axis.set_yticks([])
        return
    axis.set_ylabel("flux (1e-17 erg/s/cm2/A)")
    axis.legend(loc="upper right")


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

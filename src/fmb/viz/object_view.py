"""Single-object view: RGB composite, the four Euclid bands, and the rest-frame spectrum.

A `Sample` here is anything with the attributes of `fmb.data.validate.Sample` (object_id, redshift,
rgb, bands, spectrum): viz is a leaf library and imports nothing of the stages.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from fmb.viz.spectrum import draw_spectrum
from fmb.viz.stretch import stretched
from fmb.viz.style import blank, fmb_style, save_figure

Sample = Any  # duck-typed: fmb.data.validate.Sample or anything shaped like it
__all__ = ["Sample", "blank", "draw_object", "draw_rgb", "draw_spectrum"]  # what the figures import from here


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
    axis.imshow(stretched(sample.bands[index]), origin="upper", cmap="magma", vmin=0, vmax=1)
    axis.set_xticks([])
    axis.set_yticks([])

"""A gallery of objects: each cell is the RGB cutout beside the smoothed rest-frame spectrum.

Used for outlier galleries (top-ranked objects, scores in the titles) and similarity figures (a
query and its neighbours).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from fmb.viz.object_view import Sample, draw_rgb, draw_spectrum
from fmb.viz.style import fmb_style, save_figure


def draw_gallery(samples: Sequence[Sample], titles: Sequence[str], path: Path, *, columns: int = 3,
                 smooth_px: float = 3.0, suptitle: str = "") -> Path:
    """Write a grid of `samples` (cutout | spectrum per cell, `titles` above each) to `path` (PNG)."""
    if len(samples) != len(titles):
        raise ValueError(f"{len(samples)} samples but {len(titles)} titles")
    columns = max(1, min(columns, len(samples)))
    rows = max(1, int(np.ceil(len(samples) / columns)))
    with fmb_style():
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(5.2 * columns, 2.1 * rows + (0.5 if suptitle else 0)))
        grid = figure.add_gridspec(rows, 2 * columns, width_ratios=[1, 2.5] * columns, hspace=0.55, wspace=0.12)
        for position, (sample, title) in enumerate(zip(samples, titles)):
            row, column = divmod(position, columns)
            image_axis = figure.add_subplot(grid[row, 2 * column])
            spectrum_axis = figure.add_subplot(grid[row, 2 * column + 1])
            draw_rgb(image_axis, sample)
            image_axis.set_title("")
            draw_spectrum(spectrum_axis, sample, smooth_px, compact=True)
            if row < rows - 1 and position + columns < len(samples):
                spectrum_axis.set_xlabel("")
            spectrum_axis.set_title(title, fontsize=8.5, loc="left")
        if suptitle:
            figure.suptitle(suptitle, fontsize=12)
        save_figure(figure, path)
    return path

"""One plotting style for every fmb figure: plain matplotlib text (no LaTeX), readable sizes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import matplotlib

STYLE = {
    "font.size": 10,
    "axes.titlesize": 11,
    "axes.labelsize": 10,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "xtick.direction": "in",
    "ytick.direction": "in",
    "text.usetex": False,
    "figure.dpi": 110,
    "savefig.dpi": 150,
    "savefig.bbox": "tight",
    "image.origin": "lower",
}


@contextmanager
def fmb_style() -> Iterator[None]:
    """Apply the style for the figures drawn inside the block (no global side effect)."""
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    with plt.rc_context(STYLE):
        yield


def save_figure(figure, path: Path) -> Path:
    """Write `figure` to `path` (PNG) atomically and close it."""
    import matplotlib.pyplot as plt

    from fmb.io import atomic_path

    with atomic_path(path) as temporary:
        figure.savefig(temporary, format="png")
    plt.close(figure)
    return path


def blank(axis, message: str) -> None:
    """An empty panel saying why it is empty."""
    axis.text(0.5, 0.5, message, ha="center", va="center", transform=axis.transAxes, color="0.4")
    axis.set_xticks([])
    axis.set_yticks([])

"""How pixel values become brightness: one stretch for every image fmb shows (the app's panels and
thumbnails, the object figure of `fmb data show` and the report)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STRETCHES = ("asinh", "linear", "sqrt", "log")
ASINH_SOFTENING = 10.0
RGB_BANDS = (3, 1, 0)  # H, Y, VIS as red, green, blue (as the survey's own RGB composite)


@dataclass(frozen=True)
class Contrast:
    """Clip at the `low` and `high` percentiles, then `stretch`."""

    stretch: str = "asinh"
    low: float = 1.0
    high: float = 99.5

    def __post_init__(self):
        from fmb.errors import FmbError

        if self.stretch not in STRETCHES:
            raise FmbError(f"unknown stretch {self.stretch!r}; one of {', '.join(STRETCHES)}")
        if not 0 <= self.low < self.high <= 100:
            raise FmbError(f"contrast needs 0 <= low < high <= 100 (percentiles), got {self.low} and {self.high}")


def stretched(image: np.ndarray, contrast: Contrast = Contrast()) -> np.ndarray:
    """`image` mapped to [0, 1]: percentile clip (over all its channels), then the stretch."""
    values = np.asarray(image, np.float64)
    low, high = np.percentile(values, [contrast.low, contrast.high])
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0, 1)
    if contrast.stretch == "asinh":
        return np.arcsinh(scaled * ASINH_SOFTENING) / np.arcsinh(ASINH_SOFTENING)
    if contrast.stretch == "sqrt":
        return np.sqrt(scaled)
    if contrast.stretch == "log":
        return np.log1p(scaled * 1000) / np.log1p(1000)
    return scaled


def band_image(bands: np.ndarray, index: int, contrast: Contrast = Contrast()) -> np.ndarray:
    """One band as (H, W, 3) uint8 in the magma colour map."""
    from matplotlib import colormaps

    return (colormaps["magma"](stretched(bands[index], contrast))[..., :3] * 255).astype(np.uint8)


def rgb_image(sample, contrast: Contrast = Contrast()) -> np.ndarray | None:
    """The colour composite as (H, W, 3) uint8: H, Y, VIS stretched together; the survey's own RGB
    when the sample has no bands; None when it has no image."""
    if sample.bands is not None:
        channels = np.stack([sample.bands[index] for index in RGB_BANDS], axis=-1)
        return (stretched(channels, contrast) * 255).astype(np.uint8)
    if sample.rgb is None:
        return None
    return (stretched(sample.rgb, contrast) * 255).astype(np.uint8)

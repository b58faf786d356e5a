"""The discovery app's images, drawn on the server: thumbnails, the object view's panels, plots.

Each image is a PNG drawn once per (object, panel, display settings) and kept under the run's app
cache (`runs/<name>/app/cache`), keyed by everything it depends on, the data index included: a
re-indexed survey never shows an old cutout. Cutouts go straight from numpy to PIL (a thumbnail
grid asks for dozens at once); figures with axes (the spectrum, the full object figure, the
discovery curve) use matplotlib, one at a time: its rc state is global.
"""

from __future__ import annotations

import hashlib
import io
import tempfile
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from fmb.config import ResolvedConfig
from fmb.data.schema import BAND_NAMES
from fmb.errors import FmbError
from fmb.io import atomic_path

STRETCHES = ("asinh", "linear", "sqrt", "log")
FRAMES = ("observed", "rest")
THUMBNAIL_PX = 112
PANEL_PX = 256
ASINH_SOFTENING = 10.0  # what `fmb.viz.object_view` uses for its band panels
RGB_BANDS = (3, 1, 0)  # H, Y, VIS as red, green, blue (as the survey's own RGB composite)
SAMPLES_KEPT = 64  # the object view asks for six panels of one object: read it once
_MATPLOTLIB = threading.Lock()


@dataclass(frozen=True)
class Contrast:
    """How pixel values become brightness: clip at the `low` and `high` percentiles, then `stretch`."""

    stretch: str = "asinh"
    low: float = 1.0
    high: float = 99.5

    def __post_init__(self):
        if self.stretch not in STRETCHES:
            raise FmbError(f"unknown stretch {self.stretch!r}; one of {', '.join(STRETCHES)}")
        if not 0 <= self.low < self.high <= 100:
            raise FmbError(f"contrast needs 0 <= low < high <= 100 (percentiles), got {self.low} and {self.high}")


def stretched(image: np.ndarray, contrast: Contrast) -> np.ndarray:
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


def band_image(bands: np.ndarray, index: int, contrast: Contrast) -> np.ndarray:
    """One band as (H, W, 3) uint8 in the magma colour map (the static object figure's)."""
    from matplotlib import colormaps

    return (colormaps["magma"](stretched(bands[index], contrast))[..., :3] * 255).astype(np.uint8)


def rgb_image(sample, contrast: Contrast) -> np.ndarray:
    """The colour composite: H, Y, VIS stretched together; the survey's own RGB when it has no bands."""
    if sample.bands is not None:
        channels = np.stack([sample.bands[index] for index in RGB_BANDS], axis=-1)
        return (stretched(channels, contrast) * 255).astype(np.uint8)
    if sample.rgb is None:
        raise FmbError(f"object {sample.object_id} has no image")
    return (stretched(sample.rgb, contrast) * 255).astype(np.uint8)


def png_of(pixels: np.ndarray, size: int) -> bytes:
    """(H, W, 3) uint8 as a PNG `size` pixels on its longer side (nearest: pixels stay pixels)."""
    from PIL import Image

    image = Image.fromarray(pixels)
    scale = size / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def figure_png(draw: Callable[[object], None], size: tuple[float, float]) -> bytes:
    """A matplotlib figure in the fmb style, drawn by `draw(figure)`, as PNG bytes."""
    from fmb.viz.style import fmb_style

    with _MATPLOTLIB, fmb_style():
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size)
        try:
            draw(figure)
            buffer = io.BytesIO()
            figure.savefig(buffer, format="png")
        finally:
            plt.close(figure)
    return buffer.getvalue()


# -- the spectrum --------------------------------------------------------------------------------------
def draw_spectrum_panel(axis, sample, frame: str, smooth_px: float) -> None:
    """Flux with its 1-sigma errors shaded, the smoothed flux, and the lines at the object's redshift.

    The axis is in the `frame` asked; the lines are always marked on a rest-frame axis (on top in
    the observed frame), so `fmb.viz.object_view` marks them for both.
    """
    from fmb.viz.object_view import blank, limit_flux_axis, mark_lines
    from fmb.viz.spectrum import smooth

    spectrum = sample.spectrum
    if spectrum is None:
        blank(axis, "no spectrum")
        return
    known_z = bool(np.isfinite(sample.redshift) and sample.redshift > -1)
    factor = 1 + sample.redshift if known_z and frame == "rest" else 1.0
    wave = spectrum.wavelength.astype(np.float64) / factor
    flux = np.where(spectrum.mask, np.nan, spectrum.flux)
    error = np.where(np.isfinite(spectrum.error), spectrum.error, np.nan)
    smoothed = smooth(spectrum.flux, spectrum.ivar, smooth_px)
    axis.fill_between(wave, flux - error, flux + error, color="0.85", lw=0, label="1-sigma error")
    axis.plot(wave, flux, color="0.6", lw=0.4, label="flux")
    axis.plot(wave, smoothed, color="k", lw=0.8, label=f"smoothed ({smooth_px:g} px)")
    limit_flux_axis(axis, smoothed)
    axis.set_xlim(wave.min(), wave.max())
    axis.set_xlabel(f"{'rest-frame' if factor != 1 else 'observed'} wavelength (A)")
    axis.set_ylabel("flux (1e-17 erg/s/cm2/A)")
    axis.legend(loc="upper right")
    if known_z:
        lines_axis = axis if factor != 1 else _rest_frame_axis(axis, 1 + sample.redshift)
        low, high = lines_axis.get_xlim()
        mark_lines(lines_axis, low, high)


def _rest_frame_axis(axis, one_plus_z: float):
    """A top x axis in rest-frame wavelength over an observed-frame axis."""
    low, high = axis.get_xlim()
    top = axis.twiny()
    top.set_xlim(low / one_plus_z, high / one_plus_z)
    top.set_xlabel("rest-frame wavelength (A)")
    return top


def draw_discovery(figure, curves: dict[str, Sequence[float]], threshold: int) -> None:
    """Objects labelled >= `threshold` among the first N of each ordering (the discovery curve)."""
    axis = figure.add_subplot()
    for name, curve in curves.items():
        axis.step(np.arange(1, len(curve) + 1), curve, where="post", label=name)
    axis.set_xlabel("objects viewed (N)")
    axis.set_ylabel(f"labelled interest >= {threshold}")
    if curves:
        axis.legend(loc="upper left")
    else:
        axis.text(0.5, 0.5, "no labels yet", ha="center", va="center", transform=axis.transAxes, color="0.4")


# -- the cache and the renderer --------------------------------------------------------------------------
class ImageCache:
    """PNG bytes by key under `directory`; a key holds everything the image depends on."""

    def __init__(self, directory: Path, generation: str):
        self.directory = directory
        self.generation = generation

    def png(self, key: tuple, draw: Callable[[], bytes]) -> bytes:
        # a hashed name: nothing of a request ever becomes part of a path
        name = hashlib.sha256(repr((self.generation, *key)).encode()).hexdigest()[:40] + ".png"
        path = self.directory.joinpath(name)
        if path.is_file():
            return path.read_bytes()
        data = draw()
        with atomic_path(path) as temporary:
            temporary.write_bytes(data)
        return data


def data_generation(config: ResolvedConfig) -> str:
    """Changes whenever the data index is rebuilt (the cutouts behind a cached image may have changed)."""
    meta = config.layout.data.index_meta
    return hashlib.sha256(meta.read_bytes()).hexdigest() if meta.is_file() else "no index"


class Renderer:
    """Every image of one run, drawn from its samples (read through the data index) and cached."""

    def __init__(self, config: ResolvedConfig):
        from fmb.data.tasks import open_fetcher

        self.fetcher = open_fetcher(config)
        self.cache = ImageCache(config.layout.app.cache, data_generation(config))
        self.smooth_px = config.show.smooth_px
        self._reading = threading.Lock()  # one Parquet file handle is shared by every request
        self.sample = lru_cache(maxsize=SAMPLES_KEPT)(self._read_sample)
        self._indexed = pd.Index(self.fetcher.index.ids)

    def knows(self, object_id: int) -> bool:
        return object_id in self._indexed

    def _read_sample(self, object_id: int):
        with self._reading:
            sample, issues = self.fetcher.sample(object_id)
        if sample is None:
            reasons = "; ".join(f"{issue.field}: {issue.reason}" for issue in issues)
            raise FmbError(f"object {object_id} cannot be shown: {reasons}")
        return sample

    def thumbnail(self, object_id: int) -> bytes:
        return self.cache.png(("thumbnail", object_id, THUMBNAIL_PX),
                              lambda: png_of(rgb_image(self.sample(object_id), Contrast()), THUMBNAIL_PX))

    def rgb(self, object_id: int, contrast: Contrast) -> bytes:
        return self.cache.png(("rgb", object_id, contrast, PANEL_PX),
                              lambda: png_of(rgb_image(self.sample(object_id), contrast), PANEL_PX))

    def band(self, object_id: int, index: int, contrast: Contrast) -> bytes:
        def draw() -> bytes:
            sample = self.sample(object_id)
            if sample.bands is None:
                raise FmbError(f"object {object_id} has no band images")
            return png_of(band_image(sample.bands, index, contrast), PANEL_PX)

        return self.cache.png(("band", object_id, index, contrast, PANEL_PX), draw)

    def spectrum(self, object_id: int, frame: str, smooth_px: float) -> bytes:
        if frame not in FRAMES:
            raise FmbError(f"unknown frame {frame!r}; one of {', '.join(FRAMES)}")
        sample = self.sample(object_id)
        return self.cache.png(("spectrum", object_id, frame, smooth_px), lambda: figure_png(
            lambda figure: draw_spectrum_panel(figure.add_subplot(), sample, frame, smooth_px), (11, 4)))

    def figure(self, object_id: int) -> bytes:
        """The static object figure of `fmb data show`, for download."""
        from fmb.viz.object_view import draw_object

        def draw() -> bytes:
            with _MATPLOTLIB, tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch).joinpath("figure.png")
                return draw_object(self.sample(object_id), path, BAND_NAMES, smooth_px=self.smooth_px).read_bytes()

        return self.cache.png(("figure", object_id, self.smooth_px), draw)

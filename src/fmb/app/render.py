"""The discovery app's images, drawn on the server by `fmb.viz` (the stretch, the spectrum panel and
the discovery curve every fmb figure uses) and cached: thumbnails, the object view's panels, plots.

Each image is a PNG drawn once per (object, panel, display settings) and kept under the run's app
cache (`runs/<name>/app/cache`), keyed by everything it depends on, the data index included: a
re-indexed survey never shows an old cutout. Cutouts go straight from numpy to PIL (a thumbnail
grid asks for dozens at once); figures with axes (the spectrum, the full object figure, the
discovery curve) use matplotlib, one at a time: its rc state is global.
"""

from __future__ import annotations

import atexit
import hashlib
import io
import logging
import tempfile
import threading
from collections import OrderedDict, deque
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd

from fmb.config import ResolvedConfig
from fmb.data.schema import BAND_NAMES
from fmb.errors import FmbError
from fmb.io import atomic_path
from fmb.viz.spectrum import FRAMES, draw_spectrum
from fmb.viz.stretch import Contrast, band_image, rgb_image

THUMBNAIL_PX = 112
PANEL_PX = 256
#: What the object page first asks for (its controls' initial values, `fmb.app.object_page`): drawn
#: ahead for the objects of a list page, so that opening one paints from the cache.
FIRST_SPECTRUM = ("rest", 2.0, (None, None))
SAMPLES_KEPT = 64  # the object view asks for six panels of one object: read it once
DRAWN_KEPT = 4096  # objects the draw-ahead remembers having drawn
_MATPLOTLIB = threading.Lock()
log = logging.getLogger("fmb.app")


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
    """A matplotlib figure in the fmb style, drawn by `draw(figure)`, as a PNG of 256 colours: a plot of
    lines on white needs no more (in a spectrum panel measured, every pixel within 8 levels of 255 of the
    full-colour one, white exact), and its file is less than half the size (the spectrum 171 -> 73 kB)
    for the browser to fetch and decode. Data are exported, never read back from these pictures."""
    from PIL import Image

    from fmb.viz.style import fmb_style

    with _MATPLOTLIB, fmb_style():
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=size)
        try:
            draw(figure)
            drawn = io.BytesIO()
            figure.savefig(drawn, format="png")
        finally:
            plt.close(figure)
    colours = Image.open(drawn).convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE, dither=Image.Dither.NONE)
    buffer = io.BytesIO()
    colours.save(buffer, format="PNG")
    return buffer.getvalue()


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


class DrawAhead:
    """One background thread drawing what `draw(object_id)` draws for the ids last `schedule`d, in
    order; a new schedule replaces what is still pending (the page the user is on now comes first).
    The last `DRAWN_KEPT` ids drawn are remembered and not drawn again (each object page asks for its
    list page, which schedules the page's objects once more).

    The thread is stopped by `close`, which runs at interpreter exit too: a daemon thread still drawing
    when Python finalises is killed inside matplotlib's FreeType code, and the process aborts
    ("terminate called without an active exception", status 134)."""

    def __init__(self, draw: Callable[[int], None]):
        self.draw = draw
        self._drawn: OrderedDict[int, None] = OrderedDict()
        self._pending: deque[int] = deque()
        self._ready = threading.Condition()
        self._thread: threading.Thread | None = None
        self._closed = False

    def schedule(self, object_ids) -> None:
        with self._ready:
            if self._closed:
                return
            self._pending.clear()
            self._pending.extend(int(object_id) for object_id in object_ids if int(object_id) not in self._drawn)
            if self._thread is None:
                self._thread = threading.Thread(target=self._work, name="fmb-draw-ahead", daemon=True)
                self._thread.start()
                atexit.register(self.close)
            self._ready.notify()

    def close(self, timeout: float = 10.0) -> None:
        """Drop what is pending and wait (up to `timeout` s) for the drawing under way to finish."""
        with self._ready:
            self._closed = True
            self._pending.clear()
            self._ready.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            with self._ready:
                while not self._pending and not self._closed:
                    self._ready.wait()
                if self._closed:
                    return
                object_id = self._pending.popleft()
            try:
                self.draw(object_id)
            except FmbError:  # the object lacks an image or a spectrum: the page will say so
                pass
            except Exception:  # a bug: logged, and the page draws it itself when asked
                log.exception("drawing object %s ahead failed", object_id)
                continue
            with self._ready:
                self._drawn[object_id] = None
                if len(self._drawn) > DRAWN_KEPT:
                    self._drawn.popitem(last=False)


class Renderer:
    """Every image of one run, drawn from its samples (read through the data index) and cached;
    `ahead` draws the object page's first screen of the objects a list page shows, in the background."""

    def __init__(self, config: ResolvedConfig):
        from fmb.data.tasks import open_fetcher

        self.fetcher = open_fetcher(config)
        self.cache = ImageCache(config.layout.app.cache, data_generation(config))
        self.smooth_px = config.show.smooth_px
        self._reading = threading.Lock()  # one Parquet file handle is shared by every request
        self.sample = lru_cache(maxsize=SAMPLES_KEPT)(self._read_sample)
        self._indexed = pd.Index(self.fetcher.index.ids)
        self.ahead = DrawAhead(self.first_screen)

    def first_screen(self, object_id: int) -> None:
        """Draw (into the cache) what opening the object's page first shows: its panels and spectrum."""
        sample = self.sample(object_id)
        if sample.bands is not None or sample.rgb is not None:
            self.rgb(object_id, Contrast())
        for index in range(len(BAND_NAMES)) if sample.bands is not None else ():
            self.band(object_id, index, Contrast())
        if sample.spectrum is not None:
            self.spectrum(object_id, *FIRST_SPECTRUM)

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
                              lambda: png_of(self._rgb(object_id, Contrast()), THUMBNAIL_PX))

    def rgb(self, object_id: int, contrast: Contrast) -> bytes:
        return self.cache.png(("rgb", object_id, contrast, PANEL_PX),
                              lambda: png_of(self._rgb(object_id, contrast), PANEL_PX))

    def _rgb(self, object_id: int, contrast: Contrast) -> np.ndarray:
        pixels = rgb_image(self.sample(object_id), contrast)
        if pixels is None:
            raise FmbError(f"object {object_id} has no image")
        return pixels

    def band(self, object_id: int, index: int, contrast: Contrast) -> bytes:
        def draw() -> bytes:
            sample = self.sample(object_id)
            if sample.bands is None:
                raise FmbError(f"object {object_id} has no band images")
            return png_of(band_image(sample.bands, index, contrast), PANEL_PX)

        return self.cache.png(("band", object_id, index, contrast, PANEL_PX), draw)

    def spectrum(self, object_id: int, frame: str, smooth_px: float,
                 wave_range: tuple[float | None, float | None] = (None, None)) -> bytes:
        """The spectrum panel in `frame`, smoothed by `smooth_px`, zoomed to `wave_range` (A, in `frame`)."""
        if frame not in FRAMES:
            raise FmbError(f"unknown frame {frame!r}; one of {', '.join(FRAMES)}")
        low, high = wave_range
        def draw() -> bytes:
            sample = self.sample(object_id)
            if sample.spectrum is None:
                raise FmbError(f"object {object_id} has no spectrum")
            return figure_png(lambda figure: draw_spectrum(figure.add_subplot(), sample, smooth_px, frame=frame,
                                                           wave_range=wave_range), (11, 4))

        return self.cache.png(("spectrum", object_id, frame, smooth_px, low, high), draw)

    def figure(self, object_id: int) -> bytes:
        """The static object figure of `fmb data show`, for download."""
        from fmb.viz.object_view import draw_object

        def draw() -> bytes:
            with _MATPLOTLIB, tempfile.TemporaryDirectory() as scratch:
                path = Path(scratch).joinpath("figure.png")
                return draw_object(self.sample(object_id), path, BAND_NAMES, smooth_px=self.smooth_px).read_bytes()

        return self.cache.png(("figure", object_id, self.smooth_px), draw)

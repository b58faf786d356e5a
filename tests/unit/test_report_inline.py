"""The report inlines photographic figures as JPEG and line art as PNG."""

import io

import numpy as np
from PIL import Image

from fmb.viz.html import _inline_encoding


def _png(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def test_a_photograph_sized_png_is_inlined_as_a_much_smaller_jpeg():
    rng = np.random.default_rng(0)
    smooth = np.cumsum(rng.normal(size=(600, 600, 3)), axis=1)  # textured like sky noise and galaxies
    photo = _png(((smooth - smooth.min()) / np.ptp(smooth) * 255).astype(np.uint8))
    mime, payload = _inline_encoding(photo)
    assert mime == "image/jpeg" and len(payload) < len(photo) / 2
    assert Image.open(io.BytesIO(payload)).size == (600, 600)


def _pixels(payload: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB"))


def test_sharp_detail_and_small_figures_stay_png():
    rng = np.random.default_rng(1)
    dots = np.where(rng.random((1200, 1200, 1)) < 0.1, 0, 255).repeat(3, 2).astype(np.uint8)
    sharp = _png(dots)  # isolated black pixels (like dense markers or text): JPEG would be larger
    assert len(sharp) > 200_000
    mime, payload = _inline_encoding(sharp)
    assert mime == "image/png" and np.array_equal(_pixels(payload), dots)  # lossless, not resized
    small = _png(dots[:100, :100])
    assert _inline_encoding(small) == ("image/png", small)


def test_figures_wider_than_the_page_are_inlined_at_page_width():
    rng = np.random.default_rng(2)
    wide = _png(rng.integers(0, 256, (900, 3000, 3), dtype=np.uint8))
    assert Image.open(io.BytesIO(_inline_encoding(wide)[1])).size == (1400, 420)

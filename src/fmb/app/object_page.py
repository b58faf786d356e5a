"""The object page's HTML, rendered by the server with its first screen in it (Jinja2, autoescaped).

The object's panels and spectrum are `<img>` tags of the page the server sends, at the controls'
initial settings (what `fmb.app.render.Renderer.first_screen` draws ahead): the browser asks for
them as soon as it reads the HTML, beside the scripts, instead of after the scripts and two API
answers; the same URLs go in the response's ``Link`` header, so it asks for them even before it
reads the body. The scripts fill in the rest (label, scores, sky position, catalog, neighbours) and redraw
a panel only when a control changes. The static files are named with a hash of their content
(``?v=``), so a browser keeps them and asks again only when the app's files change.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from urllib.parse import urlencode

from fmb.app.render import FIRST_SPECTRUM
from fmb.data.schema import BAND_NAMES
from fmb.viz.spectrum import FRAMES
from fmb.viz.stretch import STRETCHES, Contrast

TEMPLATES_DIR = Path(__file__).with_name("templates")


def static_version(files: dict[str, Path]) -> str:
    """A hash of the static files' contents: it changes whenever one of them does."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name].read_bytes())
    return digest.hexdigest()[:16]


class ObjectPage:
    """Renders the object page of one object id (already checked to be in the run)."""

    def __init__(self, version: str):
        from jinja2 import Environment, FileSystemLoader, StrictUndefined

        environment = Environment(loader=FileSystemLoader(TEMPLATES_DIR), autoescape=True, undefined=StrictUndefined)
        self.template = environment.get_template("object.html")
        contrast, (frame, smooth, _) = Contrast(), FIRST_SPECTRUM
        # the controls' initial values, written as the page's script reads them back into a query
        low, high, smooth = f"{contrast.low:g}", f"{contrast.high:g}", f"{smooth:g}"
        self.settings = {
            "version": version, "bands": BAND_NAMES, "stretches": STRETCHES, "contrast": contrast,
            "low": low, "high": high, "frames": tuple(reversed(FRAMES)), "spectrum_frame": frame, "smooth": smooth,
            "image_query": urlencode({"stretch": contrast.stretch, "low": low, "high": high}),
            "spectrum_query": urlencode({"frame": frame, "smooth": smooth}),
        }

    def image_urls(self, object_id: int) -> dict[str, str | list[str]]:
        """The first screen's image URLs: ``rgb``, ``bands`` (one per band) and ``spectrum``."""
        panels, spectrum = self.settings["image_query"], self.settings["spectrum_query"]
        return {"rgb": f"/img/{int(object_id)}/rgb.png?{panels}",
                "bands": [f"/img/{int(object_id)}/band/{index}.png?{panels}" for index in range(len(BAND_NAMES))],
                "spectrum": f"/img/{int(object_id)}/spectrum.png?{spectrum}"}

    def render(self, object_id: int) -> str:
        return self.template.render(object_id=str(int(object_id)), urls=self.image_urls(object_id), **self.settings)

    def preload_header(self, object_id: int) -> str:
        """An HTTP ``Link`` header asking for the first screen's images with the page's headers, before
        its body is read (the browser's preload reuses them for the page's own `<img>` tags)."""
        urls = self.image_urls(object_id)
        return ", ".join(f"<{url}>; rel=preload; as=image" for url in [urls["rgb"], *urls["bands"], urls["spectrum"]])

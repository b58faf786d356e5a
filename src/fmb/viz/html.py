"""The HTML report's building blocks: one self-contained page (figures inlined, no external files
or scripts). A leaf: it knows HTML and image encoding, nothing about runs or stages."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import pandas as pd

from fmb.io import atomic_path

_CSS = """
body{font-family:-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;margin:0;color:#1d2430;background:#f4f5f7}
header{background:#14213d;color:#fff;padding:22px 40px}header h1{margin:0;font-size:26px}
header p{margin:6px 0 0;color:#c9d1e3}nav{background:#1f2f55;padding:8px 40px}
nav a{color:#dfe6f5;margin-right:18px;text-decoration:none;font-size:14px}
main{max-width:1280px;margin:0 auto;padding:10px 40px 60px}
section{background:#fff;border-radius:8px;box-shadow:0 1px 3px rgba(0,0,0,.08);padding:18px 26px;margin:22px 0}
h2{margin-top:0;border-bottom:2px solid #e3e7ee;padding-bottom:6px}h3{margin-bottom:6px}
.cards{display:flex;flex-wrap:wrap;gap:14px}.card{background:#eef2f8;border-radius:6px;padding:10px 16px;min-width:130px}
.card b{display:block;font-size:22px;color:#14213d}.card span{font-size:12px;color:#5a6478}
table{border-collapse:collapse;font-size:13px;margin:8px 0}th,td{padding:4px 10px;border-bottom:1px solid #e3e7ee;text-align:right}
th{background:#f0f3f8}td:first-child,th:first-child{text-align:left}img{max-width:100%;margin:8px 0}
.note{color:#5a6478;font-size:13px}figure{margin:10px 0}figcaption{font-size:13px;color:#5a6478}
.row{display:flex;flex-wrap:wrap;gap:16px}.row figure{flex:0 1 calc((100% - 32px) / 3);min-width:300px}
"""
_REENCODE_ABOVE_BYTES = 200_000  # smaller figures are inlined as they are
_INLINE_WIDTH_PX = 1400  # the page is at most 1280 px wide


# -- building blocks --------------------------------------------------------------------------------

def image(path: Path, caption: str = "", max_width_px: int | None = None) -> str:
    """The figure inlined; `max_width_px` keeps tall heatmaps from filling the whole page."""
    if not path.is_file():
        return ""
    mime, payload = _inline_encoding(path.read_bytes())
    data = base64.b64encode(payload).decode()
    text = f"<figcaption>{html.escape(caption)}</figcaption>" if caption else ""
    style = f" style='max-width:{max_width_px}px'" if max_width_px else ""
    return f"<figure><img alt='{html.escape(path.stem)}'{style} src='data:{mime};base64,{data}'>{text}</figure>"


def _inline_encoding(png: bytes) -> tuple[str, bytes]:
    """What the page inlines for a figure file: no wider than the page shows (the file on disk keeps
    its full resolution), and as JPEG where that is much smaller: cutout mosaics and galleries are
    photographs, which PNG stores at a megabyte each; line plots stay PNG, with sharp text."""
    if len(png) < _REENCODE_ABOVE_BYTES:
        return "image/png", png
    from PIL import Image

    image = Image.open(io.BytesIO(png)).convert("RGB")
    if image.width > _INLINE_WIDTH_PX:
        image = image.resize((_INLINE_WIDTH_PX, round(image.height * _INLINE_WIDTH_PX / image.width)), Image.LANCZOS)
    encoded = {}
    for mime, fmt, options in (("image/png", "PNG", {"optimize": True}), ("image/jpeg", "JPEG", {"quality": 88})):
        buffer = io.BytesIO()
        image.save(buffer, format=fmt, **options)
        encoded[mime] = buffer.getvalue()
    smaller_png = min(encoded["image/png"], png, key=len)
    return ("image/jpeg", encoded["image/jpeg"]) if len(encoded["image/jpeg"]) < 0.6 * len(smaller_png) else (
        "image/png", smaller_png)


def table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.{digits}f}", na_rep="–")


def link_table(frame: pd.DataFrame, links: list[dict[str, str]], digits: int = 3) -> str:
    """`table`, each row ending with its links (name -> URL, opened in a new tab)."""
    shown = frame.map(lambda v: "–" if pd.isna(v) else html.escape(f"{v:.{digits}f}" if isinstance(v, float) else str(v)))
    shown["links"] = [" ".join(f"<a href='{html.escape(url)}' target='_blank' rel='noopener noreferrer'>"
                               f"{html.escape(name)}</a>" for name, url in row.items()) for row in links]
    return shown.to_html(index=False, border=0, escape=False)


def row(figures: list[str]) -> str:
    """Small figures side by side."""
    return f"<div class='row'>{''.join(figures)}</div>" if any(figures) else ""


def cards(values: dict[str, object]) -> str:
    return "<div class='cards'>" + "".join(
        f"<div class='card'><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>" for k, v in values.items()) + "</div>"


def note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"




def write_page(path: Path, title: str, subtitle: str, sections: list[tuple[str, str, str]]) -> Path:
    """Write the page: a header, a navigation bar and one <section> per (anchor, title, html)."""
    navigation = "".join(f'<a href="#{anchor}">{html.escape(name)}</a>' for anchor, name, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{html.escape(name)}</h2>{content}</section>'
                   for anchor, name, content in sections)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>{html.escape(title)}</h1>"
            f"<p>{html.escape(subtitle)}</p></header><nav>{navigation}</nav><main>{body}</main></body></html>")
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path

"""`fmb report`: one self-contained HTML page per run (figures inlined, no external files or scripts).

It reads what the stages wrote under ``runs/<name>/`` and shows each section only when its stage
has run, so the page is useful at any point of a run and never shows stale placeholders.
"""

from __future__ import annotations

import base64
import html
import io
import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from fmb import __version__
from fmb.config import ResolvedConfig
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


def report(config: ResolvedConfig) -> Path:
    """Write runs/<name>/report.html and return its path."""
    run = config.run_dir
    sections = [section for section in (
        _data_section(run), _models_section(run), _quality_section(run), _galleries_section(run),
        _agreement_section(run), _probes_section(run), _similarity_section(run), _maps_section(run),
        _timings_section(run)) if section]
    navigation = "".join(f'<a href="#{anchor}">{html.escape(title)}</a>' for anchor, title, _ in sections)
    body = "".join(f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{content}</section>'
                   for anchor, title, content in sections)
    page = (f"<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>fmb report: {html.escape(config.name)}</title>"
            f"<style>{_CSS}</style></head><body><header><h1>fmb report: {html.escape(config.name)}</h1>"
            f"<p>{html.escape(_subtitle(config))}</p></header><nav>{navigation}</nav><main>{body}</main></body></html>")
    path = run / "report.html"
    with atomic_path(path) as temporary:
        temporary.write_text(page, encoding="utf-8")
    return path


def _subtitle(config: ResolvedConfig) -> str:
    return (f"data {config.data.source} | models {', '.join(config.run.models)} | seed {config.seed} | "
            f"fmb {__version__} | {time.strftime('%Y-%m-%d %H:%M')}")


# -- building blocks --------------------------------------------------------------------------------

def _image(path: Path, caption: str = "", max_width_px: int | None = None) -> str:
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


def _table(frame: pd.DataFrame, digits: int = 3) -> str:
    return frame.to_html(index=False, border=0, float_format=lambda v: f"{v:.{digits}f}", na_rep="–")


def _row(figures: list[str]) -> str:
    """Small figures side by side."""
    return f"<div class='row'>{''.join(figures)}</div>" if any(figures) else ""


def _cards(values: dict[str, object]) -> str:
    return "<div class='cards'>" + "".join(
        f"<div class='card'><b>{html.escape(str(v))}</b><span>{html.escape(k)}</span></div>" for k, v in values.items()) + "</div>"


def _note(text: str) -> str:
    return f"<p class='note'>{html.escape(text)}</p>"


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# -- sections: each returns (anchor, title, html) or None when its stage has not run ------------------

def _data_section(run: Path):
    index = run / "data" / "index.parquet"
    if not index.is_file():
        return None
    cards = {"objects indexed": f"{pq.read_metadata(index).num_rows:,}"}
    validation = _json(run / "data" / "validation.json") or {}
    cards.update({key.replace("_", " "): value for key, value in validation.items() if isinstance(value, (int, float))})
    content = _cards(cards)
    rejects = run / "data" / "rejects.parquet"
    if rejects.is_file():
        frame = pq.read_table(rejects).to_pandas()
        if len(frame):
            grouped = frame.groupby(["stage", "field", "action"]).size().rename("objects").reset_index()
            content += "<h3>Rejected or repaired inputs</h3>" + _table(grouped.sort_values("objects", ascending=False).head(20))
            content += _note(f"Every problem, object by object: {rejects}")
        else:
            content += _note("No input problems were found.")
    return "data", "Data", content


def _models_section(run: Path):
    rows = []
    for manifest_path in sorted((run / "embeddings").glob("*/manifest.json")):
        manifest = json.loads(manifest_path.read_text())
        signature = manifest.get("signature", {})
        rows.append({"model": manifest_path.parent.name,
                     "objects": sum(part["rows"] for part in manifest.get("parts", {}).values()),
                     "dims": ", ".join(f"{k} {v}" for k, v in signature.get("dims", {}).items()),
                     "layer": signature.get("layer", ""), "pooling": signature.get("pooling", ""),
                     "weights sha256": str(signature.get("weights_sha256", ""))[:12]})
    if not rows:
        return None
    content = _table(pd.DataFrame(rows)) + _note("Full preprocessing and per-part checksums: embeddings/<model>/manifest.json.")
    content += _row([_image(history, f"adaptation of {history.parent.name}: training and validation loss")
                     for history in sorted((run / "models").glob("*/history.png"))])
    return "models", "Models and embeddings", content


def _quality_section(run: Path):
    metrics_path = run / "analysis" / "evaluation" / "metrics.csv"
    if not metrics_path.is_file():
        return None
    from fmb.analyze.evaluate import summary_table

    summary = summary_table(pd.read_csv(metrics_path))
    best = summary.sort_values("mean_class_ap", ascending=False).groupby("model").head(3)
    content = (_note("Against the synthetic survey's injected anomalies (truth never seen by the detectors). "
                     "Best three scores per model by mean average precision over anomaly classes.")
               + _table(best[["model", "score", "mean_class_ap", "ap", "auroc", "recall_1pct", "recall_5pct"]])
               + _image(run / "analysis" / "evaluation" / "ap_by_class.png", "average precision per anomaly class"))
    return "quality", "Detection quality", content


def _galleries_section(run: Path):
    figures = run / "analysis" / "figures"
    galleries = sorted(figures.glob("gallery_*.png"))
    if not galleries and not (figures / "scores.png").is_file():
        return None
    content = "".join(_image(path, f"top-ranked objects, {path.stem.removeprefix('gallery_')}") for path in galleries)
    content += _image(figures / "scores.png", "score distributions; dashed: top 1 %")
    return "anomalies", "Top anomalies", content


def _agreement_section(run: Path):
    directory = run / "analysis" / "agreement"
    summary = _json(directory / "summary.json")
    if summary is None:
        return None
    content = _cards({"common objects": f"{summary.get('n_common', 0):,}", "systems": len(summary.get("systems", []))})
    content += _row([_image(directory / f"{name}.png", caption) for name, caption in (
        ("spearman", "Spearman rank correlation"), ("jaccard", "top-k % Jaccard overlap"))])
    content += _image(directory / "retention.png", "retention of each system's top set in the others")
    content += _image(directory / "displacement.png", "displacement of top objects", 1000)
    disagreement = directory / "disagreement.csv"
    if disagreement.is_file():
        frame = pd.read_csv(disagreement)
        content += f"<h3>Disagreements ({len(frame)})</h3>" + _table(frame.head(15), digits=2)
    return "agreement", "Agreement between systems", content


def _probes_section(run: Path):
    directory = run / "analysis" / "probes"
    results = directory / "results.csv"
    if not results.is_file():
        return None
    frame = pd.read_csv(results)
    shown = [c for c in ("target", "model", "modality", "n", "r2_ridge_mean", "r2_ridge_std", "r2_lgbm_mean", "r2_lgbm_std",
                         "gap", "pr", "pr_err", "epd") if c in frame.columns]
    content = (_note("k-fold cross-validated R2 of physical parameters from each embedding; 'random' = random features "
                     "on the same objects and folds.") + _table(frame[shown])
               + _image(directory / "r2.png", "decodability") + _image(directory / "pareto.png", "R2 against participation ratio"))
    content += "".join(_image(path, f"out-of-fold predictions, {path.stem.removeprefix('scatter_')}")
                       for path in sorted(directory.glob("scatter_*.png")))
    return "probes", "Physical-parameter probes", content


def _similarity_section(run: Path):
    directory = run / "analysis" / "similarity"
    examples = _one_per_model(sorted((directory / "figures").glob("*.png")))
    if not examples and not (directory / "neighbour_ranks.png").is_file():
        return None
    content = "".join(_image(path, path.stem.replace("_", " ")) for path in examples)
    content += _image(directory / "neighbour_ranks.png", "where the neighbours of top anomalies fall in the anomaly ranking")
    return "similarity", "Similarity search", content


def _one_per_model(figures: list[Path]) -> list[Path]:
    """The first example of each model (<model>_<modality>_<query>.png), the joint modality first."""
    chosen: dict[str, Path] = {}
    for path in sorted(figures, key=lambda p: "_joint_" not in p.name):
        chosen.setdefault(path.name.split("_")[0], path)
    return [chosen[model] for model in sorted(chosen)]


def _maps_section(run: Path):
    path = run / "analysis" / "figures" / "umap.png"
    return ("maps", "Embedding maps", _image(path, "UMAP of each model's embedding")) if path.is_file() else None


def _timings_section(run: Path):
    state = _json(run / "run" / "state.json")
    if not state:
        return None
    frame = pd.DataFrame([{"stage": stage, "status": entry.get("status"), "seconds": entry.get("seconds")}
                          for stage, entry in state.items()])
    return "timings", "Timings", _table(frame, digits=1)

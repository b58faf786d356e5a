"""`fmb analyze figures`: the stage-5 figures of a run, written to runs/<name>/analysis/figures/.

The plotting itself is in the `fmb.viz` library; this stage chooses what to draw from the run.

* umap.png: one column per model; its UMAP map (joint embedding, image when it has none) coloured
  by a catalog column (else the anomaly percentile, else density) above a thumbnail mosaic of it;
* scores.png: per model, the distributions of the scores that feed the fusion, top 1 % marked;
* gallery_<model>.png: each model's top-ranked objects in rank order, cutout beside spectrum.

UMAP coordinates are cached in runs/<name>/cache/umap/ under a hash of their inputs, outside the
figures directory, so a rerun of this stage after a change elsewhere keeps the maps that still hold.

Galleries rank by the score itself (the original drew the first rows of a CSV, in file order).
The agreement and evaluation heatmaps belong to their own stages and are not redrawn here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fmb.config import ResolvedConfig
from fmb.data.catalog import catalog_path, load_catalog
from fmb.data.index import Fetcher
from fmb.data.tasks import open_fetcher
from fmb.detect.scores import (DEFAULT_RANKING, frame_headline, fusion_inputs, is_score, load_score_tables,
                               parse_score_column, pct_column, score_tables, top)
from fmb.embed.store import embedded_models, embedding_manifests, embedding_parts, read_rows
from fmb.errors import FmbError
from fmb.models.registry import model_label
from fmb.stage import Stage
from fmb.viz.gallery import draw_gallery
from fmb.viz.object_view import blank
from fmb.viz.style import fmb_style, save_figure
from fmb.viz.umap_map import (MISSING_CATEGORY, MapPanel, UmapSettings, draw_umap_figure, mosaic_picks,
                              subsample, umap_coordinates, unit_box)

CATALOG_LABELS = {"Z": "redshift z", "LOGM": "log10 stellar mass (Msun)", "LOGSFR": "log10 SFR (Msun/yr)"}
SCORE_LABELS = {"mismatch": "image-spectrum mismatch", "fused_geo": "fused (geometric)"}
PERCENTILE_TAGS = {"img": "image", "spec": "spectrum"}  # gallery titles: pct of these modalities, then of mismatch
MAP_MODALITIES = ("joint", "image")  # the joint embedding describes the whole object; image is the fallback
_COLOUR_KEY = "analyze.figures.color_by"


def figures(config: ResolvedConfig, log: Callable[[str], None] = print) -> dict[str, Path]:
    """Draw every figure the run's embeddings and scores allow; {figure name: PNG path}."""
    models = embedded_models(config)
    scores = load_score_tables(config, _drawn)
    if not models and not scores:
        raise FmbError("nothing to draw: run `fmb embed` and `fmb detect` first")
    fetcher = open_fetcher(config)
    paths = {}
    if models:
        paths["umap"] = umap_figure(config, models, scores, fetcher, log)
    if scores:
        paths["scores"] = draw_score_distributions(scores, score_panels(config), config.layout.figures.scores)
    for model, frame in scores.items():
        path = gallery(config, model, frame, fetcher, log)
        if path is not None:
            paths[f"gallery_{model}"] = path
    return paths


def _drawn(column: str) -> bool:
    """The score-table columns the figures read: ids, scores, and the percentiles in gallery titles."""
    return column == "object_id" or is_score(column) or column.startswith("pct_")


# -- UMAP maps ---------------------------------------------------------------------------------------
def umap_figure(config: ResolvedConfig, models: list[str], scores: dict[str, pd.DataFrame], fetcher: Fetcher,
                log: Callable[[str], None]) -> Path:
    """umap.png: per model its coloured map over its thumbnail mosaic."""
    settings = config.analyze.figures
    umap_settings = UmapSettings(settings.umap_neighbors, settings.umap_min_dist, settings.umap_max_objects, config.seed)
    panels = []
    for model in models:
        modality, ids, vectors = map_inputs(config.layout.embeddings(model).dir, umap_settings)
        start = time.perf_counter()
        mapped, xy = umap_coordinates(model, ids, vectors, umap_settings, config.layout.cache("umap"))
        log(f"{model}: UMAP of {len(mapped)} {modality} embeddings ({time.perf_counter() - start:.1f} s)")
        panels.append(MapPanel(f"{model_label(model)} ({modality}, {len(mapped):,} objects)", mapped, unit_box(xy), None))
    colour_label = colour_panels(config, panels, models, scores)
    log(f"UMAP maps coloured by {colour_label}")
    attach_tiles(panels, fetcher, settings.mosaic_cells)
    return draw_umap_figure(panels, colour_label, settings.mosaic_cells, config.layout.figures.umap)


def map_inputs(directory: Path, settings: UmapSettings) -> tuple[str, np.ndarray, np.ndarray]:
    """(modality, ids, vectors) of the objects a model is mapped by: its UMAP sample (`subsample`),
    read part by part, so memory holds the sample whatever the survey's size."""
    parts = embedding_parts(directory)
    positions = subsample(sum(part.rows for part in parts), settings.max_objects, settings.seed)
    for modality in MAP_MODALITIES:
        ids, matrices, _ = read_rows(parts, positions, (modality,))
        if modality in matrices:
            return modality, ids, matrices[modality]
    raise FmbError(f"{directory} holds none of the {' or '.join(MAP_MODALITIES)} embeddings")


def colour_panels(config: ResolvedConfig, panels: list[MapPanel], models: list[str],
                  scores: dict[str, pd.DataFrame]) -> str:
    """Set each panel's colour values or categories; returns the colour label ('density' leaves both None)."""
    catalog = load_catalog(config, required=False)
    column = _colour_column(catalog, config.analyze.figures.color_by)
    if column is not None:
        for panel in panels:
            if pd.api.types.is_numeric_dtype(catalog[column]):
                panel.values = catalog[column].reindex(panel.ids).to_numpy(dtype=float)
            else:  # a class column such as SPECTYPE: one colour per class
                panel.categories = catalog[column].reindex(panel.ids).astype("string").str.strip().fillna(
                    MISSING_CATEGORY).to_numpy(dtype=object)
        return CATALOG_LABELS.get(column, column)
    ranking = {m: frame_headline(scores[m], config.analyze.figures.gallery_score, config.detect.fusion_method)
               for m in models if m in scores}
    if len(ranking) < len(models) or None in ranking.values():
        return "log10 objects per cell"
    for panel, model in zip(panels, models):
        ranked = scores[model].set_index("object_id")[ranking[model]].rank(pct=True)
        panel.values = 100 * ranked.reindex(panel.ids).to_numpy(dtype=float)
    return "anomaly percentile (100 = most anomalous)"


def attach_tiles(panels: list[MapPanel], fetcher: Fetcher, cells: int) -> None:
    """Give each panel the cutouts of its mosaic picks (all panels' objects fetched in one pass)."""
    picks = [mosaic_picks(panel.xy, cells) for panel in panels]
    wanted = np.unique(np.concatenate([panel.ids[index] for panel, (index, _) in zip(panels, picks)]))
    rgb = {s.object_id: s.rgb for s in fetcher.samples(wanted) if s is not None and s.rgb is not None}
    for panel, (index, cell) in zip(panels, picks):
        panel.tiles = [(tuple(c), rgb[i]) for i, c in zip(panel.ids[index].tolist(), cell.tolist()) if i in rgb]


# -- score distributions -----------------------------------------------------------------------------
def score_panels(config: ResolvedConfig) -> list[str]:
    """The scores the fusion reads (per-modality density, misalignment) and its result."""
    return fusion_inputs(config.detect.fusion_method) + [DEFAULT_RANKING]


def score_label(column: str) -> str:
    parsed = parse_score_column(column)
    if parsed:
        return f"{parsed[0]} ({parsed[1]})"
    return SCORE_LABELS.get(column, column)


def draw_score_distributions(scores: dict[str, pd.DataFrame], columns: list[str], path: Path) -> Path:
    """Rows: models; columns: scores; log-count histograms with the top-1 % threshold dashed."""
    columns = [c for c in columns if any(c in frame for frame in scores.values())]
    with fmb_style():
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(len(scores), len(columns), squeeze=False, layout="constrained",
                                    figsize=(2.5 * len(columns) + 0.5, 1.8 * len(scores) + 0.9))
        for row, (model, frame) in enumerate(scores.items()):
            for axis, column in zip(axes[row], columns):
                _histogram(axis, frame[column].to_numpy(dtype=float) if column in frame else np.array([]))
            axes[row, 0].set_ylabel(f"{model_label(model)}\nobjects")
        for axis, column in zip(axes[0], columns):
            axis.set_title(score_label(column))
        figure.suptitle("Anomaly score distributions (dashed: top-1 % threshold)")
        figure.supxlabel("score (higher = more anomalous; beyond the bulk the axis is logarithmic)", fontsize=9)
        return save_figure(figure, path)


def _histogram(axis, values: np.ndarray) -> None:
    values = values[np.isfinite(values)]
    if not values.size:
        blank(axis, "not scored")
        return
    edges = _bin_edges(axis, values)
    axis.hist(values, bins=edges, color="0.55", log=True, histtype="stepfilled")  # one polygon: 60 bars draw slowly
    axis.axvline(np.percentile(values, 99), color="tab:red", ls="--", lw=1)
    axis.set_xlim(edges[0], edges[-1])
    axis.set_ylim(bottom=0.7)  # always show the single-object level, 10^0
    axis.yaxis.set_minor_formatter("")  # less than a decade of counts would otherwise label every minor tick
    axis.tick_params(labelsize=8)


def _bin_edges(axis, values: np.ndarray, bins: int = 60) -> np.ndarray:
    """Even bins on a linear axis; density scores can reach 1e19 for a handful of objects, so a tail
    ten times wider than the bulk switches the axis to symlog (linear over the bulk, log beyond)."""
    bulk = float(np.max(np.abs(np.percentile(values, [1, 99]))))
    if bulk > 0 and np.max(np.abs(values)) > 10 * bulk:
        axis.set_xscale("symlog", linthresh=bulk)
        axis.set_xticks(_symlog_ticks(values.min(), values.max(), bulk), minor=False)
        axis.xaxis.set_major_formatter(_short_number)
        axis.minorticks_off()
    forward = axis.xaxis.get_transform()
    ends = forward.transform(np.array([values.min(), values.max()]))
    return forward.inverted().transform(np.linspace(ends[0], ends[1], bins + 1))


def _symlog_ticks(low: float, high: float, linthresh: float) -> list[float]:
    """0 and +-linthresh (one significant digit) over the linear part, then every `step` decades
    (at most ~4 of them), spaced so that no two labels touch."""
    near = float(f"{linthresh:.0e}")
    last = int(np.floor(np.log10(max(abs(low), abs(high)))))
    step = max(1, int(np.ceil((last - np.log10(near)) / 4)))
    linear = (-near, 0.0, near) if step == 1 else (-near, near)  # a squeezed linear part has room for two
    first = int(np.ceil(np.log10(near) + 0.7 * step))
    decades = [sign * 10.0**k for k in range(first, last + 1, step) for sign in (-1, 1)]
    return sorted(t for t in (*linear, *decades) if low <= t <= high)


def _short_number(value: float, _position=None) -> str:
    return f"{value:g}" if abs(value) < 1e4 else f"{value:.0e}".replace("e+0", "e").replace("e+", "e")


# -- outlier galleries -------------------------------------------------------------------------------
def gallery_title(record: dict, redshift: float, column: str, method: str) -> str:
    """'#1  39627...  z=0.412' over 'fused_geo 0.9985  img 0.999  spec 0.998  mis 0.997'."""
    known_z = f"z={redshift:.3f}" if np.isfinite(redshift) else "z unknown"
    parts = [f"{column.removeprefix('score_')} {record[column]:.4g}"]
    for tag, name in _title_percentiles(method).items():
        if name in record and np.isfinite(record[name]):
            parts.append(f"{tag} {record[name]:.3f}")
    return f"#{record['rank']}  {record['object_id']}  {known_z}\n" + "  ".join(parts)


def gallery(config: ResolvedConfig, model: str, frame: pd.DataFrame, fetcher: Fetcher,
            log: Callable[[str], None]) -> Path | None:
    """gallery_<model>.png: the model's top-ranked objects, or None when it has no score to rank by."""
    settings = config.analyze.figures
    method = config.detect.fusion_method
    column = frame_headline(frame, settings.gallery_score, method)
    if column is None:
        log(f"{model}: no score to rank a gallery by")
        return None
    if settings.gallery_score and column != settings.gallery_score:
        log(f"{model}: no {settings.gallery_score} scores; gallery ranked by {column}")
    best = top(frame, column, settings.gallery_size)
    cells = [(record, sample) for record, sample in zip(best.to_dict("records"), fetcher.samples(best["object_id"]))
             if sample is not None]
    if len(cells) < len(best):
        log(f"{model}: {len(best) - len(cells)} top-ranked objects fail the data checks and are left out")
    titles = [gallery_title(record, sample.redshift, column, method) for record, sample in cells]
    return draw_gallery([sample for _, sample in cells], titles, config.layout.figures.gallery(model),
                        suptitle=f"{model_label(model)}: top {len(best)} objects by {column}")


def _title_percentiles(method: str) -> dict[str, str]:
    """{tag: pct column} shown in a gallery title: each modality's fused density, then the mismatch."""
    tags = {tag: pct_column(f"score_{modality}_{method}") for tag, modality in PERCENTILE_TAGS.items()}
    return tags | {"mis": pct_column("mismatch")}


def _figure_inputs(config: ResolvedConfig) -> list[Path]:
    catalog = catalog_path(config)
    scores = list(score_tables(config).values())
    return embedding_manifests(config) + scores + ([catalog] if catalog else []) + [config.layout.data.index]


def check_figures(config: ResolvedConfig) -> None:
    """Before anything is written (the run's remembered settings among it): a colour column asked
    for (not the default, which falls back to the anomaly percentile where the catalog lacks it) is
    one of the catalog's, not a typo that would colour the maps by something else without a word."""
    if config.origins.get(_COLOUR_KEY, "default") == "default":
        return
    catalog = load_catalog(config, required=False)
    if _colour_column(catalog, config.analyze.figures.color_by) is None:
        have = f"its columns are {', '.join(sorted(map(str, catalog.columns)))}" if catalog is not None else \
            "the run has no catalog"
        raise FmbError(f"{_COLOUR_KEY}: no catalog column {config.analyze.figures.color_by!r} to colour the maps "
                       f"by; {have}")


def _colour_column(catalog: pd.DataFrame | None, asked: str) -> str | None:
    """The catalog's column named `asked`, whatever its case (logm, LOGM); None when it has none."""
    if catalog is None:
        return None
    return next((column for column in catalog.columns if str(column).lower() == asked.lower()), None)


FIGURES = Stage("figures", figures, ("analyze.figures", "seed", "run.models", "detect.fusion_method"),
                inputs=_figure_inputs, outputs=lambda config: [config.layout.figures.dir], after=("detect",),
                check=check_figures)

"""UMAP maps of the embeddings: cached 2-D coordinates, a coloured map and a thumbnail mosaic.

UMAP is the slow step of the figures (tens of seconds per model), so its coordinates are cached
in a file named by a hash of everything they depend on: the object ids, the vectors themselves,
the UMAP parameters and the umap-learn version. Re-embedding under the same run name changes the
vectors and so the key (the original cached by name and silently reused stale maps); an unchanged
rerun reads the file and never imports umap.

The mosaic cuts the map into cells and draws, in each non-empty cell, the cutout of the object
nearest the cell centre, so the layout of the map can be read as images.
"""

from __future__ import annotations

import hashlib
import json
import warnings
import zipfile
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path

import numpy as np

from fmb.io import atomic_path
from fmb.viz.style import fmb_style, save_figure

HEXBIN_MIN_OBJECTS = 3000  # below this a scatter shows individual objects better than hexagon means
VIEW = (-0.02, 1.02)  # the unit box and a small margin: the visible part of every map
MAX_CATEGORIES = 9  # the most common classes get their own colour; the rest are drawn as "other"
MISSING_CATEGORY = "unknown"
UMAP_EPOCHS = 200  # umap's own default above 10k objects; its 500 below made one 10k map take 115 s instead of 11 s


@dataclass(frozen=True)
class UmapSettings:
    neighbors: int
    min_dist: float
    max_objects: int
    seed: int


@dataclass
class MapPanel:
    """One model's map: unit-box coordinates, colour values or categories (both None = density) and
    mosaic tiles."""

    title: str
    ids: np.ndarray
    xy: np.ndarray
    values: np.ndarray | None
    tiles: list[tuple[tuple[int, int], np.ndarray]] = field(default_factory=list)  # ((column, row), RGB)
    categories: np.ndarray | None = None  # a class label per object (e.g. SPECTYPE)


def cache_key(ids: np.ndarray, vectors: np.ndarray, settings: UmapSettings) -> str:
    """A hash of everything the coordinates depend on (not of any name)."""
    digest = hashlib.sha256()
    digest.update(np.ascontiguousarray(ids, dtype=np.int64).tobytes())
    digest.update(str(vectors.shape).encode())
    digest.update(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
    digest.update(json.dumps({**asdict(settings), "umap": version("umap-learn"), "epochs": UMAP_EPOCHS}).encode())
    return digest.hexdigest()[:24]


def umap_coordinates(name: str, ids: np.ndarray, vectors: np.ndarray, settings: UmapSettings,
                     cache_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(ids of the mapped objects, their (n, 2) UMAP coordinates), from the cache when it matches."""
    key = cache_key(ids, vectors, settings)
    path = cache_dir / f"umap-{name}-{key}.npz"
    if path.is_file():
        try:
            with np.load(path) as cached:
                return cached["ids"], cached["xy"]
        except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):  # damaged: built again below
            pass
    chosen = subsample(len(ids), settings.max_objects, settings.seed)
    xy = fit_umap(vectors[chosen], settings)
    with atomic_path(path) as temporary, open(temporary, "wb") as handle:
        np.savez(handle, ids=ids[chosen], xy=xy)
    for stale in cache_dir.glob(f"umap-{name}-*.npz"):  # one map per name is ever read again
        if stale != path:
            stale.unlink()
    return ids[chosen], xy


def subsample(count: int, at_most: int, seed: int) -> np.ndarray:
    """Sorted positions of a seeded random subset (all positions when count <= at_most)."""
    if count <= at_most:
        return np.arange(count)
    return np.sort(np.random.default_rng(seed).choice(count, at_most, replace=False))


def fit_umap(vectors: np.ndarray, settings: UmapSettings) -> np.ndarray:
    """2-D UMAP coordinates. The neighbours are found exactly (brute force) and handed to umap: its
    own approximate search (NNDescent) costs a minute of numba compilation in every new process."""
    import umap  # numba compilation makes this import slow: paid only on a cache miss
    from sklearn.neighbors import NearestNeighbors

    neighbors = min(settings.neighbors, len(vectors) - 1)
    distances, indices = NearestNeighbors(n_neighbors=neighbors, algorithm="brute").fit(vectors).kneighbors(vectors)
    reducer = umap.UMAP(n_neighbors=neighbors, min_dist=settings.min_dist, n_epochs=UMAP_EPOCHS,
                        random_state=settings.seed, n_jobs=1,
                        precomputed_knn=(indices, distances.astype(np.float32), None))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="precomputed_knn", category=UserWarning)  # we never call transform
        return reducer.fit_transform(vectors).astype(np.float32)


def unit_box(xy: np.ndarray) -> np.ndarray:
    """Coordinates scaled (same factor on both axes) so the 1st-99th percentile box fits in [0, 1]:
    a few far islands no longer squeeze the bulk of the map into a corner."""
    low, high = np.percentile(xy, [1, 99], axis=0)
    span = max(float((high - low).max()), 1e-12)
    return (xy - (low + high) / 2) / span + 0.5


def mosaic_picks(xy: np.ndarray, cells: int) -> tuple[np.ndarray, np.ndarray]:
    """For each non-empty cell of a cells x cells grid over the unit square: the index of the point
    nearest the cell centre (ties: the lower index) and the cell as (column, row)."""
    inside = np.flatnonzero(np.all((xy >= 0) & (xy <= 1), axis=1))
    cell = np.minimum((xy[inside] * cells).astype(int), cells - 1)
    distance = np.hypot(*(xy[inside] - (cell + 0.5) / cells).T)
    flat = cell[:, 1] * cells + cell[:, 0]
    order = np.lexsort((inside, distance, flat))
    first = np.diff(flat[order], prepend=-1) != 0  # the first row of each cell in that order
    return inside[order[first]], cell[order[first]]


def draw_umap_figure(panels: list[MapPanel], colour_label: str, cells: int, path: Path) -> Path:
    """Top row: each map coloured by its values (or density); bottom row: its thumbnail mosaic."""
    with fmb_style():
        import matplotlib.pyplot as plt

        figure = plt.figure(figsize=(3.4 * len(panels) + 0.9, 7.2))
        grid = figure.add_gridspec(2, len(panels) + 1, width_ratios=[1] * len(panels) + [0.05],
                                   hspace=0.12, wspace=0.06)
        grouped = [_grouped(p.categories) for p in panels] if all(p.categories is not None for p in panels) else []
        colours = _category_colours(grouped)
        mappables = []
        for column, panel in enumerate(panels):
            top, bottom = figure.add_subplot(grid[0, column]), figure.add_subplot(grid[1, column])
            if colours:
                _draw_categories(top, panel.xy, grouped[column], colours)
            else:
                mappables.append(_draw_coloured(top, panel))
            top.set_title(panel.title)
            _draw_mosaic(bottom, panel, cells)
            _frame(top, x_label="", y_label="UMAP 2" if column == 0 else "")
            _frame(bottom, x_label="UMAP 1", y_label="UMAP 2" if column == 0 else "")
        if colours:
            _category_legend(figure.add_subplot(grid[0, -1]), colours, colour_label)
        else:
            _share_colours(mappables, panels)
            figure.colorbar(mappables[0], cax=figure.add_subplot(grid[0, -1]), label=colour_label)
        return save_figure(figure, path)


def _category_colours(grouped: list[np.ndarray]) -> dict[str, object]:
    """{class: colour} over every panel's grouped classes (none: {}): most common classes first,
    'other' and unknown in grey."""
    if not grouped:
        return {}
    labels, counts = np.unique(np.concatenate(grouped), return_counts=True)
    order = [labels[i] for i in np.argsort(-counts, kind="stable")]
    grey = [label for label in ("other", MISSING_CATEGORY) if label in order]
    named = [label for label in order if label not in grey]
    palette = [f"C{i}" for i in range(len(named))]
    return {**dict(zip(named, palette)), **{label: "0.7" for label in grey}}


def _grouped(categories: np.ndarray) -> np.ndarray:
    """Classes beyond the MAX_CATEGORIES most common of this panel become 'other'."""
    labels, counts = np.unique(categories.astype(str), return_counts=True)
    kept = set(labels[np.argsort(-counts, kind="stable")][:MAX_CATEGORIES])
    return np.array([c if c in kept or c == MISSING_CATEGORY else "other" for c in categories.astype(str)], dtype=object)


def _draw_categories(axis, xy: np.ndarray, grouped: np.ndarray, colours: dict[str, object]) -> None:
    """Common classes first, so the rare ones (often the interesting ones) are drawn on top."""
    seen = _in_view(xy)
    size = float(np.clip(3000 / max(int(seen.sum()), 1), 1, 12))
    most_common = next(iter(colours))
    for label, colour in colours.items():
        chosen = seen & (grouped == label)
        axis.scatter(*xy[chosen].T, s=size if label == most_common else 2 * size, color=colour,
                     linewidths=0, rasterized=True)


def _category_legend(axis, colours: dict[str, object], title: str) -> None:
    from matplotlib.lines import Line2D

    axis.axis("off")
    handles = [Line2D([], [], marker="o", linestyle="", color=colour, label=label) for label, colour in colours.items()]
    axis.legend(handles=handles, title=title, loc="center left", frameon=False)


def _in_view(xy: np.ndarray) -> np.ndarray:
    return np.all((xy >= VIEW[0]) & (xy <= VIEW[1]), axis=1)


def _draw_coloured(axis, panel: MapPanel):
    seen = _in_view(panel.xy)
    extent = VIEW * 2
    if panel.values is None:
        x, y = panel.xy[seen].T
        return axis.hexbin(x, y, gridsize=_gridsize(len(x)), extent=extent, mincnt=1, bins="log",
                           cmap="viridis", linewidths=0)
    known = seen & np.isfinite(panel.values)
    unknown = seen & ~known
    axis.scatter(*panel.xy[unknown].T, s=1, color="0.85", rasterized=True)  # unknown values stay visible, grey
    x, y = panel.xy[known].T
    if known.sum() < HEXBIN_MIN_OBJECTS:
        return axis.scatter(x, y, c=panel.values[known], s=float(np.clip(3000 / max(len(x), 1), 2, 12)),
                            cmap="plasma", linewidths=0, rasterized=True)
    return axis.hexbin(x, y, C=panel.values[known], reduce_C_function=np.mean, gridsize=_gridsize(len(x)),
                       extent=extent, mincnt=1, cmap="plasma", linewidths=0)


def _gridsize(count: int) -> int:
    return int(np.clip(np.sqrt(count) / 2, 15, 80))


def _share_colours(mappables: list, panels: list[MapPanel]) -> None:
    """One colour scale for all maps: the 2nd-98th percentile of every value, or the densest cell."""
    values = [p.values[np.isfinite(p.values)] for p in panels if p.values is not None]
    if values and np.concatenate(values).size:
        low, high = np.percentile(np.concatenate(values), [2, 98])
    else:
        low, high = 0.0, max(float(np.max(m.get_array(), initial=1.0)) for m in mappables)
    for mappable in mappables:
        mappable.set_clim(low, high)


def _draw_mosaic(axis, panel: MapPanel, cells: int) -> None:
    axis.set_facecolor("0.08")
    pad = 0.04 / cells
    for (column, row), rgb in panel.tiles:
        axis.imshow(rgb, origin="upper", interpolation="antialiased",
                    extent=(column / cells + pad, (column + 1) / cells - pad, row / cells + pad, (row + 1) / cells - pad))


def _frame(axis, x_label: str, y_label: str) -> None:
    axis.set_xlim(*VIEW)
    axis.set_ylim(*VIEW)
    axis.set_aspect("equal")
    axis.set_xticks([])
    axis.set_yticks([])
    axis.set_xlabel(x_label)
    axis.set_ylabel(y_label)

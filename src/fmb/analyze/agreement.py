"""`fmb analyze agreement`: do different systems call the same objects anomalous?

A *system* is one score column of one model's score table: "aion joint flow" (aion's
`score_joint_flow`), "astropt mismatch", "pixels fused_geo". `analyze.agreement.methods` picks them:
a detect method name selects that method's column for every modality present, any other name
selects the column of that name (`mismatch`, `fused_*`).

Every number is computed on the common object set, the objects with a finite score in every system,
ranked again on that set. The original code mixed ranks from each model's own run with thresholds
from the merged count and let objects missing from one model vanish silently; here rank and
threshold always refer to the same N objects, and what each system lost to the intersection is
reported.

Conventions, with N common objects and rank 1 = highest score ("min" ranks: tied objects share the
best rank, so row order never decides anything):

* position p = 100 * rank / N: the percent of objects ranked at or above it (small = anomalous).
* top k %    = the objects with rank <= m(k) = ceil(k / 100 * N). A tie across the cut keeps the
  whole tied group, so a top set may hold more than m(k) objects, never fewer.
* Spearman   = Pearson correlation of average ranks (equal to scipy.stats.spearmanr).
* Jaccard    J(A, B) = |top_A & top_B| / |top_A | top_B| for the top `top_pct` % sets.
* retention@k, S -> T = |top_S & topk_T| / |top_S|: the share of S's top `top_pct` % that T also
  puts in its top k %. Not symmetric; the diagonal is 1 when k >= top_pct.
* displacement S -> T: the positions in T of S's top `top_pct` % objects.
* disagreement: an object in the top `top_pct` % of system a and beyond `beyond_pct` % of system b
  (rank_b > m(beyond_pct)).

Outputs in runs/<name>/analysis/agreement/: spearman.csv, jaccard.csv, retention_<k>.csv,
disagreement.csv, spearman.png, jaccard.png, retention.png, displacement.png and summary.json.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from itertools import permutations, product
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from scipy.cluster.hierarchy import dendrogram, leaves_list, linkage, optimal_leaf_ordering
from scipy.spatial.distance import squareform
from scipy.stats import rankdata

from fmb.config import AgreementConfig, ResolvedConfig
from fmb.data.hashing import read_id_share, share_for
from fmb.detect.scores import MODALITIES, headline, rank_descending, score_column, score_tables
from fmb.errors import FmbError
from fmb.io import write_csv, write_json
from fmb.layout import AgreementFiles
from fmb.viz.style import fmb_style, save_figure
from fmb.stage import Stage

ANNOTATE_MAX = 24  # heatmaps with more systems than this are too dense for numbers in the cells
GRID_MAX = 6  # displacement grid: at most this many systems per side
BINS_PER_DECADE = 5  # displacement histograms: log-spaced, with edges at 1 % and 10 %


@dataclass(frozen=True)
class System:
    model: str
    column: str

    @property
    def label(self) -> str:
        name = self.column.removeprefix("score_").replace("_", " ") if self.column.startswith("score_") else self.column
        return f"{self.model} {name}"


@dataclass
class Agreement:
    """All comparisons of the systems on the common set; matrices are indexed like `systems`."""

    systems: list[System]
    object_ids: np.ndarray
    ranks: np.ndarray  # N x S, 1 = most anomalous
    spearman: np.ndarray
    jaccard: np.ndarray
    retention: dict[float, np.ndarray]
    disagreement: pd.DataFrame

    @property
    def labels(self) -> list[str]:
        return [system.label for system in self.systems]


# ---- metrics: pure functions of N x S score or rank arrays ----


def top_count(n: int, pct: float) -> int:
    """m(k) = ceil(k / 100 * n), at least 1. The tolerance keeps 7 % of 100 (7.000000000000001) at 7."""
    return max(1, math.ceil(pct * n / 100 - 1e-9))


def descending_ranks(scores: np.ndarray) -> np.ndarray:
    """Per column: 1 = highest score, ties share the best rank."""
    return np.apply_along_axis(rank_descending, 0, np.asarray(scores, dtype=float))


def in_top(ranks: np.ndarray, pct: float) -> np.ndarray:
    """Mask of the top `pct` % (rank <= m(pct)), per column of `ranks`."""
    return ranks <= top_count(len(ranks), pct)


def positions(ranks: np.ndarray) -> np.ndarray:
    """p = 100 * rank / N: percent of objects ranked at or above each object (small = anomalous)."""
    return 100.0 * ranks / len(ranks)


def spearman_matrix(scores: np.ndarray) -> np.ndarray:
    """rho(A, B) = Pearson correlation of the average ranks of columns A and B (NaN for a constant column)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.corrcoef(rankdata(scores, axis=0), rowvar=False)


def jaccard_matrix(top: np.ndarray) -> np.ndarray:
    """J(A, B) = |A & B| / |A | B| between the boolean columns of `top` (N x S)."""
    members = top.astype(np.int64)
    shared = members.T @ members
    sizes = np.diag(shared)
    return shared / (sizes[:, None] + sizes[None, :] - shared)


def retention_matrix(ranks: np.ndarray, top_pct: float, level_pct: float) -> np.ndarray:
    """R[s, t] = share of system s's top `top_pct` % that system t ranks in its top `level_pct` %."""
    source = in_top(ranks, top_pct).astype(np.int64)
    target = in_top(ranks, level_pct).astype(np.int64)
    return (source.T @ target) / source.sum(axis=0)[:, None]


def displacement(source_ranks: np.ndarray, target_ranks: np.ndarray, top_pct: float) -> np.ndarray:
    """Positions in the target system (100 * rank / N) of the source system's top `top_pct` % objects."""
    return positions(target_ranks)[in_top(source_ranks, top_pct)]


def disagreements(ranks: np.ndarray, labels: list[str], object_ids: np.ndarray, top_pct: float,
                  beyond_pct: float) -> pd.DataFrame:
    """Objects in the top `top_pct` % of system_a and beyond `beyond_pct` % of system_b, every ordered pair.

    pct_a and pct_b are the object's positions (100 * rank / N) in the two systems.
    """
    top, ordinary, position = in_top(ranks, top_pct), ~in_top(ranks, beyond_pct), positions(ranks)
    pairs = []
    for a, b in permutations(range(len(labels)), 2):
        hit = np.flatnonzero(top[:, a] & ordinary[:, b])
        pairs.append(pd.DataFrame({"object_id": object_ids[hit], "system_a": labels[a], "system_b": labels[b],
                                   "pct_a": position[hit, a], "pct_b": position[hit, b]}))
    return pd.concat(pairs, ignore_index=True)


def compare(systems: list[System], object_ids: np.ndarray, scores: np.ndarray, settings: AgreementConfig) -> Agreement:
    """Every metric of the module doc on one common-set score matrix (N x S, columns like `systems`)."""
    ranks = descending_ranks(scores)
    labels = [system.label for system in systems]
    return Agreement(
        systems=systems, object_ids=object_ids, ranks=ranks,
        spearman=spearman_matrix(scores),
        jaccard=jaccard_matrix(in_top(ranks, settings.top_pct)),
        retention={level: retention_matrix(ranks, settings.top_pct, level) for level in settings.retention_pcts},
        disagreement=disagreements(ranks, labels, object_ids, settings.top_pct, settings.beyond_pct),
    )


# ---- systems and the common set ----


def select_columns(columns: list[str], methods: list[str]) -> list[str]:
    """The score columns `methods` pick from a table's columns, in methods x modality order."""
    selected = []
    for method in methods:
        per_modality = [score_column(m, method) for m in MODALITIES if score_column(m, method) in columns]
        selected += per_modality or ([method] if method in columns else [])
    return list(dict.fromkeys(selected))


def load_systems(score_files: list[Path], methods: list[str], share: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """One column per `System`, outer-joined on object_id: NaN where a system lacks an object. With
    `share` < 1, only the objects of that seeded id-hash share, the same in every table."""
    columns_of = {path: select_columns(pq.read_schema(path).names, methods) for path in score_files}
    unmatched = [m for m in methods if not any(select_columns(columns, [m]) for columns in columns_of.values())]
    if unmatched:
        raise FmbError(f"analyze.agreement.methods {unmatched} match no score column in {[p.name for p in score_files]}")
    series = []
    for path, columns in columns_of.items():
        frame = read_id_share(path, ["object_id", *columns], share, seed).set_index("object_id")
        series += [frame[column].astype(float).rename(System(path.stem, column)) for column in columns]
    return pd.concat(series, axis=1)


def common_set(wide: pd.DataFrame) -> tuple[pd.DataFrame, list[int]]:
    """The rows with a finite score in every column (sorted by object_id), and per column how many
    objects it scored that are outside that set."""
    finite = np.isfinite(wide.to_numpy(dtype=float))
    common = finite.all(axis=1)
    return wide[common].sort_index(), (finite & ~common[:, None]).sum(axis=0).tolist()


# ---- summary numbers ----


def pair_medians(matrix: np.ndarray, models: list[str]) -> dict[str, float | None]:
    """Median off-diagonal value over all pairs, pairs within one model, and pairs across models."""
    same = np.equal.outer(models, models)
    off_diagonal = ~np.eye(len(models), dtype=bool)
    groups = {"all": off_diagonal, "same_model": same & off_diagonal, "across_models": ~same}
    return {name: _number(np.nanmedian(matrix[mask])) if mask.any() else None for name, mask in groups.items()}


def _number(value: float) -> float | None:
    return round(float(value), 4) if np.isfinite(value) else None


def _summary(result: Agreement, dropped: list[int], settings: AgreementConfig, files: dict[str, Path]) -> dict:
    models = [system.model for system in result.systems]
    n_common = len(result.object_ids)
    headline = {"spearman": pair_medians(result.spearman, models), "jaccard": pair_medians(result.jaccard, models)}
    headline |= {f"retention_{level:g}": pair_medians(matrix, models) for level, matrix in result.retention.items()}
    return {
        "n_common": n_common,
        "top_pct": settings.top_pct,
        "top_count": top_count(n_common, settings.top_pct),
        "systems": [{"label": s.label, "model": s.model, "column": s.column, "scored": n_common + lost, "dropped": lost}
                    for s, lost in zip(result.systems, dropped)],
        "median_off_diagonal": headline,
        "disagreements": len(result.disagreement),
        "files": {name: str(path) for name, path in files.items()},
    }


# ---- the task ----


def agreement(config: ResolvedConfig, log=print) -> dict:
    """Compare every selected system on the common object set; write tables, figures and summary.json."""
    settings = config.analyze.agreement
    score_files = list(score_tables(config).values())
    if not score_files:
        raise FmbError("no scores to compare; run `fmb detect` first")
    share = share_for(score_files, settings.max_objects)
    if share < 1.0:
        log(f"agreement: comparing a seeded {share:.2%} share of the objects (analyze.agreement.max_objects)")
    wide = load_systems(score_files, settings.methods, share, config.seed)
    systems = list(wide.columns)
    if len(systems) < 2:
        raise FmbError(f"agreement needs at least 2 systems; analyze.agreement.methods {settings.methods} selects "
                       f"only {[s.label for s in systems]} from {[p.name for p in score_files]}")
    common, dropped = common_set(wide)
    if len(common) < 2:
        raise FmbError(f"only {len(common)} objects have a finite score in all {len(systems)} systems")
    log(f"agreement: {len(systems)} systems on {len(common)} common objects"
        + "".join(f"; {s.label} loses {lost}" for s, lost in zip(systems, dropped) if lost))
    result = compare(systems, common.index.to_numpy(), common.to_numpy(dtype=float), settings)
    out = config.layout.agreement
    files = _write_tables(result, out) | _draw_figures(result, settings, out)
    summary = _summary(result, dropped, settings, files) | {"object_share": share}
    write_json(summary, out.summary)
    log(f"agreement: median off-diagonal Spearman {summary['median_off_diagonal']['spearman']['all']}; wrote {out.dir}")
    return summary


def _write_tables(result: Agreement, out: AgreementFiles) -> dict[str, Path]:
    matrices = {"spearman": result.spearman, "jaccard": result.jaccard}
    matrices |= {f"retention_{level:g}": matrix for level, matrix in result.retention.items()}
    files = [_write_csv(_labelled(matrix, result.labels, name), out.matrix(name)) for name, matrix in matrices.items()]
    files.append(_write_csv(result.disagreement, out.disagreement, index=False))
    return {path.name: path for path in files}


def _labelled(matrix: np.ndarray, labels: list[str], name: str) -> pd.DataFrame:
    frame = pd.DataFrame(matrix, index=labels, columns=labels)
    frame.index.name = "source \\ target" if name.startswith("retention") else "system"
    return frame


def _write_csv(frame: pd.DataFrame, path: Path, index: bool = True) -> Path:
    return write_csv(frame, path, index=index, float_format="%.6g")


# ---- figures ----


def cluster_order(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Leaf order and average-linkage tree of the systems with distance 1 - similarity (NaN = unrelated)."""
    distance = np.clip(1 - np.nan_to_num(similarity, nan=0.0), 0, None)  # rho may exceed 1 by rounding
    np.fill_diagonal(distance, 0)
    condensed = squareform(distance, checks=False)
    tree = optimal_leaf_ordering(linkage(condensed, "average"), condensed)
    return leaves_list(tree), tree


def displacement_subset(systems: list[System]) -> list[int]:
    """Systems drawn in the displacement grid: all of them for one model, else each model's headline
    system (the one `fmb.detect.scores.headline` picks among its systems); at most GRID_MAX."""
    models = list(dict.fromkeys(system.model for system in systems))
    if len(models) == 1:
        return list(range(len(systems)))[:GRID_MAX]

    own = {model: [i for i, system in enumerate(systems) if system.model == model] for model in models}

    def chosen(model: str) -> int:
        columns = [systems[i].column for i in own[model]]
        best = headline(columns)
        return own[model][columns.index(best)] if best else own[model][0]

    return [chosen(model) for model in models][:GRID_MAX]


def _draw_figures(result: Agreement, settings: AgreementConfig, out: AgreementFiles) -> dict[str, Path]:
    top = f"top {settings.top_pct:g} %"
    with fmb_style():
        paths = [
            _clustered_heatmap(result.spearman, result.labels, "Spearman rank correlation of the scores",
                               "Spearman rho", (-1, 1), "RdBu_r", out.figure("spearman")),
            _clustered_heatmap(result.jaccard, result.labels, f"Overlap of the {top} sets",
                               f"Jaccard index, {top}", (0, 1), "viridis", out.figure("jaccard")),
            _retention_figure(result, top, out.figure("retention")),
            _displacement_grid(result, settings, out.figure("displacement")),
        ]
    return {path.name: path for path in paths}


def _clustered_heatmap(matrix: np.ndarray, labels: list[str], title: str, colorbar_label: str,
                       limits: tuple[float, float], cmap: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    order, tree = cluster_order(matrix)
    side = 2.5 + 0.38 * len(labels)
    figure = plt.figure(figsize=(side + 1.0, side + 0.8))
    grid = figure.add_gridspec(2, 2, height_ratios=[1, 6], width_ratios=[30, 1], hspace=0.02, wspace=0.03)
    tree_axis = figure.add_subplot(grid[0, 0])
    dendrogram(tree, ax=tree_axis, no_labels=True, link_color_func=lambda _: "0.35")
    tree_axis.axis("off")
    tree_axis.set_title(title)
    axis = figure.add_subplot(grid[1, 0])
    image = _heatmap(axis, matrix[np.ix_(order, order)], [labels[i] for i in order], limits, cmap)
    figure.colorbar(image, cax=figure.add_subplot(grid[1, 1]), label=colorbar_label)
    return save_figure(figure, path)


def _retention_figure(result: Agreement, top: str, path: Path) -> Path:
    import matplotlib.pyplot as plt

    order, _ = cluster_order(result.jaccard)
    labels = [result.labels[i] for i in order]
    side = 2.5 + 0.38 * len(labels)
    figure, axes = plt.subplots(1, len(result.retention), figsize=(side * len(result.retention) + 1.0, side),
                                squeeze=False, constrained_layout=True)
    for axis, (level, matrix) in zip(axes[0], result.retention.items()):
        image = _heatmap(axis, matrix[np.ix_(order, order)], labels, (0, 1), "viridis")
        axis.set_title(f"retention@{level:g} %")
        axis.set_ylabel(f"source: its {top}")
        axis.set_xlabel(f"target: share of them in its top {level:g} %")
    figure.colorbar(image, ax=axes[0], label="share of the source's top set", shrink=0.8)
    return save_figure(figure, path)


def _heatmap(axis, matrix: np.ndarray, labels: list[str], limits: tuple[float, float], cmap: str):
    """Square heatmap with system labels; values written in the cells when there are few systems."""
    image = axis.imshow(matrix, cmap=cmap, vmin=limits[0], vmax=limits[1], origin="upper", aspect="auto")
    axis.set_xticks(range(len(labels)), labels, rotation=55, ha="right", rotation_mode="anchor", fontsize=8)
    axis.set_yticks(range(len(labels)), labels, fontsize=8)
    axis.tick_params(length=0)
    if len(labels) <= ANNOTATE_MAX:
        fontsize = min(8.0, 150 / len(labels))
        for (row, column), value in np.ndenumerate(matrix):
            red, green, blue, _ = image.cmap(image.norm(value))
            colour = "black" if 0.299 * red + 0.587 * green + 0.114 * blue > 0.5 else "white"
            axis.text(column, row, "" if np.isnan(value) else f"{value:.2f}", ha="center", va="center",
                      fontsize=fontsize, color=colour)
    return image


def position_bins(n: int) -> np.ndarray:
    """Histogram edges 100 * 10^(j / BINS_PER_DECADE) from below rank 1 (position 100 / n) up to 100 %.

    Log-spaced so the 1 % and 10 % levels stay readable, and every decade boundary is an edge.
    """
    lowest = math.floor(BINS_PER_DECADE * math.log10(0.5 / n))
    return 100 * 10 ** (np.arange(lowest, 1) / BINS_PER_DECADE)


def _displacement_grid(result: Agreement, settings: AgreementConfig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    chosen = displacement_subset(result.systems)
    n = len(chosen)
    edges = position_bins(len(result.object_ids))
    figure, axes = plt.subplots(n, n, figsize=(2.3 * n + 0.6, 1.8 * n + 0.6), squeeze=False, constrained_layout=True)
    for (row, source), (column, target) in product(enumerate(chosen), repeat=2):
        axis = axes[row, column]
        if source == target:
            axis.axis("off")
            axis.text(0.5, 0.5, result.labels[source].replace(" ", "\n", 1), ha="center", va="center",
                      transform=axis.transAxes, fontsize=10, weight="bold")
            continue
        values = displacement(result.ranks[:, source], result.ranks[:, target], settings.top_pct)
        axis.hist(values, bins=edges, color="tab:blue", alpha=0.8)
        # no agreement = positions uniform on (0, 100]: each bin expects its share of the width
        axis.stairs(len(values) * np.diff(edges) / 100, edges, color="0.3", linestyle=":", linewidth=1)
        for level in settings.retention_pcts:
            axis.axvline(level, color="0.3", linestyle="--", linewidth=0.8)
        axis.set_title("   ".join(f"ret@{level:g}% {matrix[source, target]:.2f}" for level, matrix in result.retention.items()),
                       fontsize=8)
        axis.set_xscale("log")
        axis.set_xlim(edges[0], 100)
        axis.xaxis.set_major_formatter("{x:g}")
        axis.tick_params(labelsize=7)
    figure.suptitle(f"Where each row system's top {settings.top_pct:g} % lands in each column system "
                    f"(N = {len(result.object_ids)}; dotted: no agreement; dashed: retention levels)")
    figure.supxlabel("position in the column system: % of objects ranked at or above (small = anomalous)", fontsize=9)
    figure.supylabel("objects", fontsize=9)
    return save_figure(figure, path)



AGREEMENT = Stage("agreement", agreement, ("analyze.agreement", "run.models"),
                  inputs=lambda config: list(score_tables(config).values()),
                  outputs=lambda config: [config.layout.agreement.dir], after=("detect",))

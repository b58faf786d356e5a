"""`fmb analyze evaluate`: how well each score finds the synthetic survey's injected anomalies.

The only stage that reads `truth.parquet`. For every model x score column (modality x method,
misalignment, fused scores): average precision, AUROC, and recall in the top 1 % and 5 %, overall
(any anomaly vs none) and per class (that class vs the ordinary objects, other anomalies left out).
Written as CSV and Markdown tables and a heatmap figure.

Every score is set beside two trivial ones, evaluated the same way as pseudo-model "trivial": the
spectrum's median S/N and the cutout's total flux. They rank objects by brightness alone, so a
detector that does no better than them finds bright objects, not anomalies. A cross-model consensus
table, when one exists, is evaluated as pseudo-model "consensus".
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score, roc_auc_score

from fmb.config import ResolvedConfig
from fmb.data.hashing import in_id_hash_share, read_id_share, share_for
from fmb.data.scan import iter_samples
from fmb.data.sources import open_source
from fmb.data.validate import RowChecker, Spectrum
from fmb.detect.scores import is_score, score_tables, summary_columns, top_fraction
from fmb.errors import FmbError
from fmb.io import atomic_path, parquet_footer_sha256, write_csv, write_table
from fmb.layout import EvaluationFiles, SurveyLayout
from fmb.progress import progress_bar
from fmb.stage import Stage

NORMAL = "none"
TRIVIAL, CONSENSUS = "trivial", "consensus"  # pseudo-models: rows of the tables, no heatmap panel
TRIVIAL_SCORES = ("spectrum_median_snr", "total_flux")
_FINGERPRINT_KEY = b"fmb.data_fingerprint"  # Parquet schema metadata of the cached trivial scores


def score_columns(columns: Iterable[str]) -> list[str]:
    """The contract's scores, and here also the trivial ones: they rank objects only as the floor that
    a detector must beat, so no other stage takes them for scores."""
    return [c for c in columns if is_score(c) or c in TRIVIAL_SCORES]


def recall_at(labels: np.ndarray, scores: np.ndarray, fraction: float) -> float:
    """Share of positives among the top `fraction` of objects by score."""
    top = top_fraction(scores, fraction)
    return float(labels[top].sum() / labels.sum()) if labels.sum() else np.nan


def metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    if labels.sum() == 0 or labels.sum() == len(labels):
        return {"ap": np.nan, "auroc": np.nan, "recall_1pct": np.nan, "recall_5pct": np.nan,
                "positives": int(labels.sum()), "objects": len(labels)}
    return {"ap": average_precision_score(labels, scores), "auroc": roc_auc_score(labels, scores),
            "recall_1pct": recall_at(labels, scores, 0.01), "recall_5pct": recall_at(labels, scores, 0.05),
            "positives": int(labels.sum()), "objects": len(labels)}  # positives / objects: the AP of chance


def evaluate_frame(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (score column, class) with the metrics; class 'all' = any anomaly."""
    return evaluate_columns((scores[["object_id", column]] for column in score_columns(scores.columns)), truth)


def evaluate_table(path: Path, truth: pd.DataFrame, share: float = 1.0, seed: int = 0) -> pd.DataFrame:
    """`evaluate_frame` of a score table on disk, read one score column at a time (and, with `share`
    < 1, only the objects of that seeded id-hash share): memory holds the ids and one column."""
    columns = score_columns(pq.read_schema(path).names)
    return evaluate_columns((read_id_share(path, ["object_id", c], share, seed) for c in columns), truth)


def evaluate_columns(frames: Iterable[pd.DataFrame], truth: pd.DataFrame) -> pd.DataFrame:
    """The metrics rows of each (object_id, score) frame against the truth, per class."""
    classes = sorted(c for c in truth["anomaly_class"].unique() if c != NORMAL)
    rows = []
    for frame in frames:
        column = frame.columns[1]
        merged = frame.merge(truth[["object_id", "anomaly_class"]], on="object_id", how="inner")
        valid = merged[np.isfinite(merged[column].to_numpy(dtype=float))]
        for name in ["all", *[c for c in classes if (merged.anomaly_class == c).any()]]:
            subset = valid if name == "all" else valid[valid.anomaly_class.isin([NORMAL, name])]
            labels = (subset.anomaly_class != NORMAL).to_numpy()
            rows.append({"score": column, "class": name, **metrics(labels, subset[column].to_numpy(dtype=float))})
    return pd.DataFrame(rows)


def truth_path(config: ResolvedConfig) -> Path:
    """evaluate.truth, else the synthetic survey's truth.parquet beside its data."""
    return config.path(config.evaluate.truth) if config.evaluate.truth else SurveyLayout(config.path(config.data.source)).truth


# -- the trivial scores ----------------------------------------------------------------------------
def spectrum_median_snr(spectrum: Spectrum | None) -> float:
    """Median |flux| * sqrt(ivar) over the observed pixels (ivar > 0); NaN without any."""
    if spectrum is None or not (spectrum.ivar > 0).any():
        return np.nan
    observed = spectrum.ivar > 0
    return float(np.median(np.abs(spectrum.flux[observed]) * np.sqrt(spectrum.ivar[observed])))


def total_flux(bands: np.ndarray | None) -> float:
    """Sum over the 4 bands of the cutout, each less its median (the sky background); NaN without bands."""
    if bands is None:
        return np.nan
    bands = bands.astype(np.float64)
    return float((bands - np.median(bands, axis=(1, 2), keepdims=True)).sum())


def stream_trivial_scores(config: ResolvedConfig, share: float = 1.0) -> pd.DataFrame:
    """One pass over the run's data source, checked as `fmb data validate` checks it; only the objects
    of the seeded id-hash `share` are kept."""
    rows = []
    with progress_bar("trivial scores", pq.read_metadata(config.layout.data.index).num_rows) as advance:
        for sample in iter_samples(open_source(config), RowChecker(config.data), [], progress=advance):
            if share >= 1.0 or in_id_hash_share(np.array([sample.object_id]), share, config.seed)[0]:
                rows.append((sample.object_id, spectrum_median_snr(sample.spectrum), total_flux(sample.bands)))
    frame = pd.DataFrame(rows, columns=["object_id", *TRIVIAL_SCORES]).astype({"object_id": "int64"})
    return frame.drop_duplicates("object_id")  # the first row of a duplicated id, as the index keeps it


def data_fingerprint(config: ResolvedConfig, share: float = 1.0) -> str:
    """The data the trivial scores come from: the index (its footer changes with the ids), index.json,
    which holds the source's content fingerprint (a survey regenerated with the same ids changes only that),
    and the data section, whose limits decide which spectra and images pass the checks."""
    files = config.layout.data
    if not files.index.is_file():
        raise FmbError(f"no index at {files.index}; run `fmb data index` first")
    meta = files.index_meta.read_bytes() if files.index_meta.is_file() else b""
    parts = [parquet_footer_sha256(files.index).encode(), meta, config.data.model_dump_json().encode(),
             *([f"share {share} seed {config.seed}".encode()] if share < 1.0 else [])]
    return hashlib.sha256(b"\0".join(parts)).hexdigest()


def trivial_scores(config: ResolvedConfig, share: float = 1.0) -> pd.DataFrame:
    """object_id, spectrum_median_snr, total_flux: streamed once (a full pass over the pixels), then read
    from the cache while the data fingerprint it was made from still matches."""
    path, fingerprint = config.layout.evaluation.trivial, data_fingerprint(config, share)
    if path.is_file() and _cached_fingerprint(path) == fingerprint:
        return pd.read_parquet(path)
    frame = stream_trivial_scores(config, share)
    table = pa.Table.from_pandas(frame, preserve_index=False)
    write_table(table.replace_schema_metadata({**table.schema.metadata, _FINGERPRINT_KEY: fingerprint.encode()}), path)
    return frame


def _cached_fingerprint(path: Path) -> str | None:
    try:
        value = (pq.read_schema(path).metadata or {}).get(_FINGERPRINT_KEY)
    except (OSError, pa.ArrowException):  # an unreadable cache is recomputed, not an error
        return None
    return value.decode() if value else None


# -- the evaluation --------------------------------------------------------------------------------
def evaluated_tables(config: ResolvedConfig, share: float = 1.0) -> dict[str, Path | pd.DataFrame]:
    """{model: score table}: the models' files by name (whatever the order of run.models), then the
    consensus file when one was made, then the trivial scores (a small frame)."""
    if not score_tables(config):
        raise FmbError("no scores to evaluate; run `fmb detect` first")
    tables: dict[str, Path | pd.DataFrame] = dict(sorted(score_tables(config).items()))
    if config.layout.scores.consensus.is_file():
        tables[CONSENSUS] = config.layout.scores.consensus
    tables[TRIVIAL] = trivial_scores(config, share)
    return tables


def evaluate(config: ResolvedConfig) -> Path:
    truth_file = truth_path(config)
    if not truth_file.is_file():
        raise FmbError(f"no truth table at {truth_file}: evaluation needs the synthetic survey's truth.parquet")
    share = share_for([truth_file], config.evaluate.max_objects)
    truth = read_id_share(truth_file, ["object_id", "anomaly_class"], share, config.seed)
    tables = []
    for model, scores in evaluated_tables(config, share).items():
        table = evaluate_table(scores, truth, share, config.seed) if isinstance(scores, Path) \
            else evaluate_frame(scores, truth)
        table.insert(0, "model", model)
        tables.append(table)
    result = pd.concat(tables, ignore_index=True)
    out = config.layout.evaluation
    _write(result, out, config.detect.fusion_method)
    return out.dir


def summary_table(result: pd.DataFrame) -> pd.DataFrame:
    """Per model x score: overall metrics plus the mean AP over anomaly classes."""
    overall = result[result["class"] == "all"].set_index(["model", "score"])[["ap", "auroc", "recall_1pct", "recall_5pct"]]
    per_class = result[result["class"] != "all"].groupby(["model", "score"])["ap"].mean().rename("mean_class_ap")
    return overall.join(per_class).sort_values("mean_class_ap", ascending=False).reset_index()


def _write(result: pd.DataFrame, out: EvaluationFiles, method: str) -> None:
    write_csv(result, out.metrics, index=False)
    summary = summary_table(result)
    with atomic_path(out.summary) as temporary:
        temporary.write_text(_markdown(summary, result))
    _heatmap(result, out.heatmap, method)


def _floor(summary: pd.DataFrame) -> str:
    """The better trivial score, named first so that a reader compares every score with it."""
    best = summary[summary.model == TRIVIAL].iloc[0]  # summary is sorted by mean class AP
    return (f"Floor: ranking by brightness alone ({best.score}) gives mean class AP {best.mean_class_ap:.3f}; "
            "a score near it finds bright objects, not anomalies.")


def _markdown(summary: pd.DataFrame, result: pd.DataFrame) -> str:
    lines = ["# Detection quality on the synthetic survey", "", _floor(summary), "",
             "Overall = any anomaly vs ordinary objects; mean_class_ap = average precision averaged over classes.", "",
             "| model | score | mean class AP | AP | AUROC | recall@1% | recall@5% |", "|---|---|---:|---:|---:|---:|---:|"]
    for row in summary.itertuples():
        lines.append(f"| {row.model} | {row.score} | {row.mean_class_ap:.3f} | {row.ap:.3f} | {row.auroc:.3f} | "
                     f"{row.recall_1pct:.3f} | {row.recall_5pct:.3f} |")
    pivot = result[result["class"] != "all"].pivot_table(index=["model", "score"], columns="class", values="ap")
    lines += ["", "## Average precision per class", "", "| model | score | " + " | ".join(pivot.columns) + " |",
              "|---|---|" + "---:|" * len(pivot.columns)]
    for (model, score), values in pivot.iterrows():
        lines.append(f"| {model} | {score} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"


def _heatmap(result: pd.DataFrame, path: Path, method: str) -> None:
    """One panel per model (rows: the summary scores of the contract, columns: anomaly classes), AP in
    each cell; the PyOD baselines and the pseudo-models (their rows are other scores) stay in the tables."""
    from fmb.viz.style import fmb_style, save_figure

    per_class = result[result["class"] != "all"]
    pivot = per_class.pivot_table(index=["model", "score"], columns="class", values="ap")
    models = [m for m in dict.fromkeys(pivot.index.get_level_values("model")) if m not in (TRIVIAL, CONSENSUS)]
    rows = summary_columns(pivot.index.get_level_values("score"), method)
    with fmb_style():
        import matplotlib.pyplot as plt

        figure, axes = plt.subplots(1, len(models), figsize=(0.55 * len(pivot.columns) * len(models) + 3.5,
                                                             0.32 * len(rows) + 2.2), squeeze=False, sharey=True)
        for axis, model in zip(axes[0], models):
            values = pivot.loc[model].reindex(rows).to_numpy()
            image = axis.imshow(values, aspect="auto", cmap="viridis", vmin=0, vmax=1, origin="upper")
            for (row, column), value in np.ndenumerate(values):
                if np.isfinite(value):
                    axis.text(column, row, f"{value:.2f}", ha="center", va="center", fontsize=6.5,
                              color="black" if value > 0.6 else "white")
            axis.set_xticks(range(len(pivot.columns)), pivot.columns, rotation=40, ha="right", fontsize=8)
            axis.set_title(model)
        axes[0][0].set_yticks(range(len(rows)), rows, fontsize=8)
        figure.colorbar(image, ax=axes[0].tolist(), label="average precision", shrink=0.8)
        figure.suptitle("Average precision per anomaly class (every score is in metrics.csv)")
        save_figure(figure, path)


def _no_truth(config: ResolvedConfig) -> str | None:
    return None if truth_path(config).is_file() or config.run.synth else f"no truth table at {truth_path(config)}"


def _inputs(config: ResolvedConfig) -> list[Path]:
    consensus = config.layout.scores.consensus
    return [*score_tables(config).values(), *([consensus] if consensus.is_file() else []), truth_path(config),
            config.layout.data.index, config.layout.data.index_meta]


def _outputs(config: ResolvedConfig) -> list[Path]:
    """The tables and figure, not the directory: a rerun keeps the trivial-score cache (which checks
    itself against the data)."""
    out = config.layout.evaluation
    return [out.metrics, out.summary, out.heatmap]


EVALUATE = Stage("evaluate", lambda config, log: evaluate(config), ("evaluate", "run.models", "detect.fusion_method"),
                 inputs=_inputs, outputs=_outputs, after=("detect",), applies=_no_truth, version=2)

"""`fmb analyze evaluate`: how well each score finds the synthetic survey's injected anomalies.

The only stage that reads `truth.parquet`. For every model x score column (modality x method,
misalignment, fused scores): average precision, AUROC, and recall in the top 1 % and 5 %, overall
(any anomaly vs none) and per class (that class vs the ordinary objects, other anomalies left out).
Written as CSV and Markdown tables and a heatmap figure.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score, roc_auc_score

from fmb.config import ResolvedConfig
from fmb.detect.scores import is_score, score_tables, summary_columns, top_fraction
from fmb.errors import FmbError
from fmb.io import atomic_path, write_csv
from fmb.layout import EvaluationFiles, SurveyLayout
from fmb.stage import Stage

NORMAL = "none"


def score_columns(frame: pd.DataFrame) -> list[str]:
    return [c for c in frame.columns if is_score(c)]


def recall_at(labels: np.ndarray, scores: np.ndarray, fraction: float) -> float:
    """Share of positives among the top `fraction` of objects by score."""
    top = top_fraction(scores, fraction)
    return float(labels[top].sum() / labels.sum()) if labels.sum() else np.nan


def metrics(labels: np.ndarray, scores: np.ndarray) -> dict:
    if labels.sum() == 0 or labels.sum() == len(labels):
        return {"ap": np.nan, "auroc": np.nan, "recall_1pct": np.nan, "recall_5pct": np.nan, "positives": int(labels.sum())}
    return {"ap": average_precision_score(labels, scores), "auroc": roc_auc_score(labels, scores),
            "recall_1pct": recall_at(labels, scores, 0.01), "recall_5pct": recall_at(labels, scores, 0.05),
            "positives": int(labels.sum())}


def evaluate_frame(scores: pd.DataFrame, truth: pd.DataFrame) -> pd.DataFrame:
    """Long table: one row per (score column, class) with the metrics; class 'all' = any anomaly."""
    merged = scores.merge(truth[["object_id", "anomaly_class"]], on="object_id", how="inner")
    rows = []
    classes = sorted(c for c in merged["anomaly_class"].unique() if c != NORMAL)
    for column in score_columns(merged):
        valid = merged[np.isfinite(merged[column].to_numpy(dtype=float))]
        for name in ["all", *classes]:
            subset = valid if name == "all" else valid[valid.anomaly_class.isin([NORMAL, name])]
            labels = (subset.anomaly_class != NORMAL).to_numpy()
            rows.append({"score": column, "class": name, **metrics(labels, subset[column].to_numpy(dtype=float))})
    return pd.DataFrame(rows)


def truth_path(config: ResolvedConfig) -> Path:
    """evaluate.truth, else the synthetic survey's truth.parquet beside its data."""
    return config.path(config.evaluate.truth) if config.evaluate.truth else SurveyLayout(config.path(config.data.source)).truth


def evaluate(config: ResolvedConfig) -> Path:
    truth_file = truth_path(config)
    if not truth_file.is_file():
        raise FmbError(f"no truth table at {truth_file}: evaluation needs the synthetic survey's truth.parquet")
    truth = pq.read_table(truth_file, columns=["object_id", "anomaly_class"]).to_pandas()
    score_files = score_tables(config)
    if not score_files:
        raise FmbError("no scores to evaluate; run `fmb detect` first")
    tables = []
    for model, path in sorted(score_files.items()):  # rows by model name, whatever the order of run.models
        table = evaluate_frame(pq.read_table(path).to_pandas(), truth)
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


def _markdown(summary: pd.DataFrame, result: pd.DataFrame) -> str:
    lines = ["# Detection quality on the synthetic survey", "",
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
    each cell; the PyOD baselines stay in the tables."""
    from fmb.viz.style import fmb_style, save_figure

    per_class = result[result["class"] != "all"]
    pivot = per_class.pivot_table(index=["model", "score"], columns="class", values="ap")
    models = list(dict.fromkeys(pivot.index.get_level_values("model")))
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
        figure.suptitle("Average precision per anomaly class (the baselines are in metrics.csv)")
        save_figure(figure, path)


def _no_truth(config: ResolvedConfig) -> str | None:
    return None if truth_path(config).is_file() or config.run.synth else f"no truth table at {truth_path(config)}"


EVALUATE = Stage("evaluate", lambda config, log: evaluate(config), ("evaluate", "run.models", "detect.fusion_method"),
                 inputs=lambda config: [*score_tables(config).values(), truth_path(config)],
                 outputs=lambda config: [config.layout.evaluation.dir], after=("detect",), applies=_no_truth)

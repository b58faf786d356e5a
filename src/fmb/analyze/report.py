"""`fmb report`: one self-contained HTML page per run (figures inlined, no external files or scripts).

It reads what the stages wrote under ``runs/<name>/`` (through the run layout) and shows each
section only when its stage has run, so the page is useful at any point of a run and never shows
stale placeholders. The page itself is put together by `fmb.viz.html`.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq

from fmb import __version__
from fmb.analyze.evaluate import TRIVIAL, summary_table
from fmb.config import ResolvedConfig
from fmb.detect.scores import CONSENSUS, DEFAULT_RANKING
from fmb.embed.store import embedding_manifests
from fmb.layout import RunLayout
from fmb.models.registry import model_label
from fmb.stage import Stage
from fmb.viz.html import cards, image, link_table, note, row, table, write_page


def report(config: ResolvedConfig) -> Path:
    """Write runs/<name>/report.html and return its path."""
    run = config.layout
    sections = [section for section in (
        _data_section(run), _models_section(run, config.run.models), _quality_section(run), _galleries_section(run),
        _candidates_section(config), _crowding_section(config),
        _agreement_section(run), _probes_section(run), _similarity_section(run), _maps_section(run),
        _timings_section(run)) if section]
    return write_page(run.report, f"fmb report: {config.name}", _subtitle(config), sections)


def _subtitle(config: ResolvedConfig) -> str:
    return (f"data {config.data.source} | models {', '.join(config.run.models)} | seed {config.seed} | "
            f"fmb {__version__} | {time.strftime('%Y-%m-%d %H:%M')}")


def _json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


# -- sections: each returns (anchor, title, html) or None when its stage has not run ------------------

def _data_section(run: RunLayout):
    index = run.data.index
    if not index.is_file():
        return None
    values = {"objects indexed": f"{pq.read_metadata(index).num_rows:,}"}
    validation = _json(run.data.validation) or {}
    values.update({key.replace("_", " "): value for key, value in validation.items() if isinstance(value, (int, float))})
    content = cards(values)
    rejects = run.data.rejects
    if rejects.is_file():
        frame = pq.read_table(rejects).to_pandas()
        if len(frame):
            grouped = frame.groupby(["stage", "field", "action"]).size().rename("objects").reset_index()
            content += "<h3>Rejected or repaired inputs</h3>" + table(grouped.sort_values("objects", ascending=False).head(20))
            content += note(f"Every problem, object by object: {rejects}")
        else:
            content += note("No input problems were found.")
    return "data", "Data", content


def _models_section(run: RunLayout, models: list[str]):
    rows = []
    for model in models:
        manifest = _json(run.embeddings(model).manifest)
        if manifest is None:
            continue
        signature = manifest.get("signature", {})
        rows.append({"model": model, "name": model_label(model),
                     "objects": sum(part["rows"] for part in manifest.get("parts", {}).values()),
                     "dims": ", ".join(f"{k} {v}" for k, v in signature.get("dims", {}).items()),
                     "layer": signature.get("layer", ""), "pooling": signature.get("pooling", ""),
                     "weights sha256": str(signature.get("weights_sha256", ""))[:12]})
    if not rows:
        return None
    content = table(pd.DataFrame(rows)) + note("Full preprocessing and per-part checksums: embeddings/<model>/manifest.json.")
    content += row([image(run.model(model).history_plot, f"adaptation of {model}: training and validation loss")
                    for model in models])
    return "models", "Models and embeddings", content


def _quality_section(run: RunLayout):
    metrics_path = run.evaluation.metrics
    if not metrics_path.is_file():
        return None
    summary = summary_table(pd.read_csv(metrics_path))
    columns = ["model", "score", "mean_class_ap", "ap", "auroc", "recall_1pct", "recall_5pct"]
    defaults = summary[summary.score.isin([DEFAULT_RANKING, CONSENSUS]) | (summary.model == TRIVIAL)]
    best = summary[summary.model != TRIVIAL].sort_values("mean_class_ap", ascending=False).groupby("model").head(3)
    content = (note(f"Against the synthetic survey's injected anomalies (truth never seen by the detectors). "
                    f"First the default ranking of each model ({DEFAULT_RANKING}: the Cauchy combination of the "
                    f"calibrated tail probabilities of every input), the cross-model consensus ({CONSENSUS}) "
                    "and the floor: ranking by brightness alone (model 'trivial').")
               + table(defaults[columns])
               + note("Best three scores per model by mean average precision over anomaly classes: picked with "
                      "the truth, so a ceiling that no user without labels has.")
               + table(best[columns])
               + image(run.evaluation.heatmap, "average precision per anomaly class"))
    return "quality", "Detection quality", content


def _galleries_section(run: RunLayout):
    figures = run.figures
    galleries = figures.galleries()
    if not galleries and not figures.scores.is_file():
        return None
    content = note(f"Galleries rank by the default ranking, {DEFAULT_RANKING}, unless analyze.figures.gallery_score "
                   "says otherwise (each gallery's title names its score).")
    content += "".join(image(path, f"top-ranked objects, {path.stem.removeprefix('gallery_')}") for path in galleries)
    content += image(figures.scores, "score distributions; dashed: top 1 %")
    return "anomalies", "Top anomalies", content


def _candidates_section(config: ResolvedConfig, count: int = 10):
    """The first objects of the default ranking with where they are on the sky and links to look them up."""
    from fmb.data.catalog import load_catalog
    from fmb.data.index import ObjectIndex
    from fmb.data.sky import object_coordinates, sky_position
    from fmb.detect.scores import ranked, score_tables

    tables = score_tables(config)
    if not tables or not config.layout.data.index.is_file():
        return None
    model, path = next(iter(tables.items()))
    top = ranked(pd.read_parquet(path, columns=["object_id", DEFAULT_RANKING]), DEFAULT_RANKING).head(count)
    where = object_coordinates(ObjectIndex.load(config.layout.data.dir), load_catalog(config, required=False))
    where = where.reindex(top["object_id"].to_numpy())
    positions = [sky_position(ra, dec) for ra, dec in zip(where["ra"], where["dec"])]
    frame = pd.DataFrame({"rank": top["rank"].to_numpy(), "object_id": top["object_id"].astype(str).to_numpy(),
                          "RA (deg)": where["ra"].to_numpy(), "Dec (deg)": where["dec"].to_numpy(),
                          "RA, Dec": [p["sexagesimal"] if p else None for p in positions]})
    content = note(f"The first {count} objects of {model}'s default ranking ({DEFAULT_RANKING}), with links to sky "
                   "viewers and archive searches at their position (`fmb export` writes them all as FITS or VOTable).")
    return "candidates", "Where the top anomalies are", content + link_table(frame, [p["links"] if p else {} for p in positions], 5)


#: The top of each default ranking compared with all objects in the crowding section: this share, at least 10.
CROWDING_TOP_SHARE = 0.01


def _crowding_section(config: ResolvedConfig):
    """How crowded the cutouts are (the nuisance covariates measured while deblending), over every
    object and at the top of each model's default ranking: a top far more crowded than the survey
    is a ranking that sees the neighbours, not the object."""
    frame = crowding_table(config)
    if frame is None:
        return None
    content = note(f"Crowding of each cutout, measured while deblending it (pixel reference): its neighbours, the "
                   f"brightest one's flux over the object's and the nearest one's distance, and whether the object "
                   f"is blended or cut by a detector edge. A nuisance, not an anomaly: the default ranking "
                   f"({DEFAULT_RANKING}) is calibrated among objects observed alike, so its top "
                   f"{CROWDING_TOP_SHARE:.0%} should be about as crowded as all objects.")
    return "crowding", "Crowding", content + table(frame, digits=2)


def crowding_table(config: ResolvedConfig) -> pd.DataFrame | None:
    """One row per group of objects (all of them; the top of each model's default ranking): the
    shares with a neighbour, blended and cut by an edge, and the neighbours' typical numbers; None
    when no model of the run stores crowding."""
    from fmb.detect.nuisance import run_crowding
    from fmb.detect.scores import ranked, score_tables

    crowding = run_crowding(config)
    if not {"neighbours", "blended", "edge"} <= set(crowding.columns):
        return None
    groups = {f"all {len(crowding):,} objects": crowding}
    for model, path in score_tables(config).items():
        if DEFAULT_RANKING in pq.read_schema(path).names:
            order = ranked(pd.read_parquet(path, columns=["object_id", DEFAULT_RANKING]), DEFAULT_RANKING)
            top = order["object_id"].head(max(10, round(CROWDING_TOP_SHARE * len(order)))).to_numpy()
            groups[f"top {len(top)}, {model} ranking"] = crowding.reindex(top)
    return pd.DataFrame([{"objects": name, **_crowding_summary(group)} for name, group in groups.items()])


def _crowding_summary(group: pd.DataFrame) -> dict:
    crowded = group[group["neighbours"] > 0]
    summary = {share: f"{(group[column] > 0).mean():.1%}" for share, column in
               (("with a neighbour", "neighbours"), ("blended", "blended"), ("cut by an edge", "edge"))}
    summary["mean neighbours"] = group["neighbours"].mean()
    if "neighbour_flux_ratio" in group:
        summary["median flux ratio (with a neighbour)"] = crowded["neighbour_flux_ratio"].median()
    if "neighbour_distance_px" in group:
        summary["median distance, px (with a neighbour)"] = crowded["neighbour_distance_px"].median()
    return summary


def _agreement_section(run: RunLayout):
    files = run.agreement
    summary = _json(files.summary)
    if summary is None:
        return None
    share = summary.get("object_share", 1.0)
    content = cards({"common objects": f"{summary.get('n_common', 0):,}" + (f" (a {share:.2%} sample)" if share < 1 else ""),
                     "systems": len(summary.get("systems", []))})
    content += row([image(files.figure(name), caption) for name, caption in (
        ("spearman", "Spearman rank correlation"), ("jaccard", "top-k % Jaccard overlap"))])
    content += image(files.figure("retention"), "retention of each system's top set in the others")
    content += image(files.figure("displacement"), "displacement of top objects", 1000)
    disagreement = files.disagreement
    if disagreement.is_file():
        frame = pd.read_csv(disagreement)
        content += f"<h3>Disagreements ({len(frame)})</h3>" + table(frame.head(15), digits=2)
    return "agreement", "Agreement between systems", content


def _probes_section(run: RunLayout):
    files = run.probes
    results = files.results
    if not results.is_file():
        return None
    frame = pd.read_csv(results)
    shown = [c for c in ("target", "model", "modality", "n", "r2_ridge_mean", "r2_ridge_std", "r2_lgbm_mean", "r2_lgbm_std",
                         "gap", "pr", "pr_err", "epd") if c in frame.columns]
    content = (note("k-fold cross-validated R2 of physical parameters from each embedding; 'random' = random features "
                     "on the same objects and folds.") + table(frame[shown])
               + image(files.r2_plot, "decodability") + image(files.pareto_plot, "R2 against participation ratio"))
    content += "".join(image(path, f"out-of-fold predictions, {path.stem.removeprefix('scatter_')}")
                       for path in files.scatter_plots())
    return "probes", "Physical-parameter probes", content


def _similarity_section(run: RunLayout):
    files = run.similarity
    examples = _one_per_model(files.examples())
    if not examples and not files.neighbour_ranks_plot.is_file():
        return None
    content = "".join(image(path, path.stem.replace("_", " ")) for path in examples)
    content += image(files.neighbour_ranks_plot, "where the neighbours of top anomalies fall in the anomaly ranking")
    return "similarity", "Similarity search", content


def _one_per_model(figures: list[Path]) -> list[Path]:
    """The first example of each model (<model>_<modality>_<query>.png), the joint modality first."""
    chosen: dict[str, Path] = {}
    for path in sorted(figures, key=lambda p: "_joint_" not in p.name):
        chosen.setdefault(path.name.split("_")[0], path)
    return [chosen[model] for model in sorted(chosen)]


def _maps_section(run: RunLayout):
    path = run.figures.umap
    return ("maps", "Embedding maps", image(path, "UMAP of each model's embedding")) if path.is_file() else None


def _timings_section(run: RunLayout):
    state = _json(run.state)
    if not state:
        return None
    frame = pd.DataFrame([{"stage": stage, "status": entry.get("status"), "seconds": entry.get("seconds")}
                          for stage, entry in state.items()])
    content = table(frame, digits=1)
    detection = _json(run.scores.summary)
    if detection:
        cost = pd.DataFrame({model: entry.get("seconds", {}) for model, entry in detection.items()}).fillna(0.0)
        content += note("Detection cost per method (seconds, fit and score over every modality; drop slow ones "
                        "from detect.methods)") + table(cost.rename_axis("method").reset_index(), digits=1)
    return "timings", "Timings", content


def _report_inputs(config: ResolvedConfig) -> list[Path]:
    run = config.layout
    return [run.analysis_dir, run.scores.dir, run.data.validation, run.data.index, *embedding_manifests(config)]


#: Comes after every other stage: it shows what they wrote.
REPORT = Stage("report", lambda config, log: report(config), ("name", "run.models"), inputs=_report_inputs,
               outputs=lambda config: [config.layout.report],
               after=("synth", "index", "validate", "adapt", "embed", "detect", "evaluate", "agreement", "probes",
                      "similarity", "figures"))

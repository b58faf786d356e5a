"""`fmb analyze`: stage 4, the analysis of the scores (each command one stage through the engine)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmb.cli.common import (ExecutorKind, Force, RunName, Sets, SlurmFlag, TaskFile, app, build_config, console,
                            executor_flags, log, run_stage)
from fmb.errors import ConfigError

analyze_app = typer.Typer(help="Stage 4: analysis of the scores.", no_args_is_help=True)
app.add_typer(analyze_app, name="analyze", rich_help_panel="Pipeline")


@analyze_app.command("evaluate")
def analyze_evaluate(force: Force = False, executor: ExecutorKind = None, slurm: SlurmFlag = False,
                     config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Detection quality against the synthetic survey's truth table: AP, AUROC, recall@1%/5%,
    per anomaly class and overall, for every model x score (CSV, Markdown, heatmap)."""
    resolved = build_config(config, set_, name, **executor_flags(executor, slurm))
    run_stage(resolved, "evaluate", force)
    files = resolved.layout.evaluation
    console.print(f"{files.metrics}, {files.summary.name}, {files.heatmap.name}")
    console.print(files.summary.read_text().split("\n## ")[0])


@analyze_app.command("agreement")
def analyze_agreement(force: Force = False, executor: ExecutorKind = None, slurm: SlurmFlag = False,
                      config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """How far the anomaly rankings of all (model, modality, method) systems agree, on their common
    objects: Spearman matrix, top-k% Jaccard, retention@1%/10% with displacement histograms, and the
    objects one system ranks top 1% and another beyond 50% (tables and clustered heatmaps)."""
    resolved = build_config(config, set_, name, **executor_flags(executor, slurm))
    summary = run_stage(resolved, "agreement", force)
    if summary is not None:
        console.print(f"{summary['n_common']} common objects, {len(summary['systems'])} systems -> "
                      f"{resolved.layout.agreement.matrix('spearman')}")


@analyze_app.command("similarity")
def analyze_similarity(
    query: Annotated[Optional[list[int]], typer.Option("--query", "-q", help="Object id (repeatable); default: the top anomalies.")] = None,
    vector: Annotated[Optional[Path], typer.Option(help="A .npy vector to search with instead (needs --model and --modality).",
                                                   exists=True, dir_okay=False)] = None,
    models: Annotated[Optional[list[str]], typer.Option("--model", help="Model (repeatable); default: all embedded.")] = None,
    modality: Annotated[Optional[str], typer.Option(help="image, spectrum or joint; default: all.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", "--n-similar", help="Neighbours per query.")] = None,
    force: Force = False,
    executor: ExecutorKind = None,
    slurm: SlurmFlag = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Nearest neighbours by cosine similarity (a persisted faiss index per model and modality, exact
    for small surveys, compressed for large ones), with a figure of each query and its neighbours,
    and where the neighbours of the top anomalies fall in the anomaly ranking.

    With --query only, this is the similarity stage (recorded, skipped when unchanged). A --vector,
    --model or --modality search is a one-off: it writes under runs/<name>/searches/ instead."""
    resolved = build_config(config, set_, name,
                            **{"analyze.similarity.k": k, "analyze.similarity.queries": query},
                            **executor_flags(executor, slurm))
    if vector is None and models is None and modality is None:
        result = run_stage(resolved, "similarity", force)
    else:
        if resolved.executor.kind == "slurm":
            raise ConfigError("a one-off search (--vector, --model or --modality) runs here, not as a SLURM job: "
                              "drop --slurm / --executor slurm, or search by --query (the similarity stage)")
        import numpy as np

        from fmb.analyze.similarity import similarity

        search_vector = np.load(vector, allow_pickle=False) if vector is not None else None
        result = similarity(resolved, None, search_vector, log=log, models=models, modality=modality,
                            out=resolved.layout.searches)
    if result is not None:
        console.print(f"wrote {result['neighbours']} and {len(result['figures'])} figures")


@analyze_app.command("probes")
def analyze_probes(force: Force = False, executor: ExecutorKind = None, slurm: SlurmFlag = False,
                   config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """How well redshift, stellar mass and SFR (catalog columns) can be read from each embedding:
    k-fold Ridge and LightGBM R2 with their spread, the non-linear gap, SHAP-based effective
    dimensionality (PR, PR90, EPD with bootstrap errors) and a random-feature baseline."""
    resolved = build_config(config, set_, name, **executor_flags(executor, slurm))
    summary = run_stage(resolved, "probes", force)
    if summary is not None:
        console.print(f"wrote {summary['directory']}")


#: The original's names of catalog columns (`fmb viz paper-umap --physical-param`).
CATALOG_NAMES = {"redshift": "Z", "z": "Z", "mass": "LOGM", "sfr": "LOGSFR"}


def catalog_column(value: str | None) -> str | None:
    return CATALOG_NAMES.get(value.lower(), value) if value else value


@analyze_app.command("figures")
def analyze_figures(
    color_by: Annotated[Optional[str], typer.Option("--color-by", "--physical-param", callback=catalog_column,
                                                    help="Catalog column colouring the UMAP maps (Z, LOGM, LOGSFR, "
                                                    "SPECTYPE; redshift, mass, sfr also work).")] = None,
    gallery_size: Annotated[Optional[int], typer.Option("--gallery-size", "--max", min=1, help="Top-ranked objects "
                                                        "per outlier gallery.")] = None,
    force: Force = False,
    executor: ExecutorKind = None,
    slurm: SlurmFlag = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Stage-5 figures: UMAP map per model (coloured by a catalog value, and a thumbnail mosaic),
    score distributions, and galleries of the top-ranked objects."""
    resolved = build_config(config, set_, name,
                            **{"analyze.figures.color_by": color_by, "analyze.figures.gallery_size": gallery_size},
                            **executor_flags(executor, slurm))
    for label, path in (run_stage(resolved, "figures", force) or {}).items():
        console.print(f"{label}: {path}")

"""The original research code's command names (reference §9), each a thin alias of the fmb command
that does the job, with a note in its --help naming that command. docs/migrating.md has the table.

    fmb retrain M                 -> fmb adapt M
    fmb detect outliers|cosine|multimodal -> fmb detect (the density, misalignment or fused columns)
    fmb analyze outliers|displacement, fmb viz advanced-analysis  -> fmb analyze agreement
    fmb analyze neighbor-ranks    -> fmb analyze similarity
    fmb analyze regression|predict-params -> fmb analyze probes
    fmb analyze tsne, fmb viz paper-umap|outlier-grid -> fmb analyze figures
    fmb viz single-object, fmb display -> fmb data show
    fmb paths                     -> this run's directories
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Optional

import typer

from fmb.cli.analyze import analyze_agreement, analyze_app, analyze_figures, analyze_probes, analyze_similarity
from fmb.cli.common import (ExecutorKind, Force, Preset, RunName, Sets, SlurmFlag, TaskFile, app, build_config,
                            executor_flags, log, registered_model)
from fmb.cli.data import data_show
from fmb.cli.stages import Methods, Models, adapt_command, detect, detect_app
from fmb.config import ResolvedConfig
from fmb.errors import ConfigError

viz_app = typer.Typer(help="The original's visualisation commands, as aliases of the fmb commands that draw "
                      "the same figures.", no_args_is_help=True)
app.add_typer(viz_app, name="viz", rich_help_panel="The original FMB's commands")


def alias(group: typer.Typer, original: str, command, fmb_name: str, note: str = "") -> None:
    """Register `command` (an fmb command function) again under the original's name `original`,
    its help led by the note naming the fmb command."""
    lead = f"The original's `{original}`: runs `fmb {fmb_name}`{note}. Prefer `fmb {fmb_name}`."
    group.command(original.split()[-1], help=f"{lead}\n\n{inspect.cleandoc(command.__doc__)}")(command)


#: (group, the original's command, the fmb command it runs, its fmb name, what of it answers the original)
ALIASES = [
    (analyze_app, "analyze outliers", analyze_agreement, "analyze agreement",
     " (Spearman between models, top-k overlaps, the fused-score view of each system)"),
    (analyze_app, "analyze displacement", analyze_agreement, "analyze agreement",
     " (retention@1%/10% and displacement histograms between all systems)"),
    (analyze_app, "analyze neighbor-ranks", analyze_similarity, "analyze similarity",
     " (its neighbour_ranks.csv and figure: where the neighbours of the top anomalies rank)"),
    (analyze_app, "analyze regression", analyze_probes, "analyze probes",
     " (redshift, mass and SFR from each embedding: Ridge, LightGBM, SHAP participation ratio)"),
    (analyze_app, "analyze predict-params", analyze_probes, "analyze probes", " (the original's dead link to regression)"),
    (analyze_app, "analyze tsne", analyze_figures, "analyze figures", " (fmb draws UMAP maps, not t-SNE)"),
    (viz_app, "viz paper-umap", analyze_figures, "analyze figures",
     " (UMAP map per model coloured by --physical-param, with a thumbnail mosaic)"),
    (viz_app, "viz outlier-grid", analyze_figures, "analyze figures",
     " (a gallery of the --max top-ranked objects per model, by the default ranking)"),
    (viz_app, "viz advanced-analysis", analyze_agreement, "analyze agreement",
     " (Spearman and Jaccard clustered heatmaps, disagreement table)"),
]
for entry in ALIASES:
    alias(*entry)

RetrainModel = Annotated[str, typer.Argument(help="aion, aion_codec, astropt or astroclip (any registered model).",
                                             callback=registered_model)]


@app.command("retrain", rich_help_panel="The original FMB's commands")
def retrain_command(model: RetrainModel, preset: Preset = None, force: Force = False, executor: ExecutorKind = None,
                    slurm: SlurmFlag = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """The original's `retrain`: runs `fmb adapt MODEL`. Prefer `fmb adapt`.

    Adapts the model to the survey (weights in runs/<name>/models/<model>/); --slurm submits it as
    one SLURM job. Task files are fmb's (configs/adapt/<model>.yaml): docs/migrating.md maps the
    original's YAML keys."""
    adapt_command(model, preset, force, executor, slurm, config, set_, name)


TopK = Annotated[int, typer.Option("--top-k", min=1, help="Objects listed per model and column.")]


def _listing(resolved: ResolvedConfig, wanted, top_k: int) -> None:
    """The top `top_k` objects of each model's score columns that `wanted(columns)` picks."""
    from fmb.detect.scores import load_score_tables, top

    for model, frame in load_score_tables(resolved).items():
        for column in wanted(list(frame.columns)):
            ranked = top(frame, column, top_k)
            log(f"{model} {column}: top {len(ranked)} " + ", ".join(
                f"{object_id} ({value:.3g})" for object_id, value in zip(ranked["object_id"], ranked[column])))
    log(f"score tables: {resolved.layout.scores.dir}")


@detect_app.command("outliers")
def detect_outliers(models: Models = None, methods: Methods = None, top_k: TopK = 5, force: Force = False,
                    executor: ExecutorKind = None, slurm: SlurmFlag = False, config: TaskFile = None,
                    set_: Sets = None, name: RunName = None) -> None:
    """The original's `detect outliers`: runs `fmb detect`. Prefer `fmb detect`.

    Lists the density scores of the flow (or of each --method): score_<modality>_<method>, the NLL
    for the flow, with pct_ and rank_ beside them in the score table. Add --method flow to fit only
    the density flow, as the original did."""
    from fmb.detect.scores import MODALITIES, score_column

    resolved = build_config(config, set_, name, **{"detect.models": models, "detect.methods": methods},
                            **executor_flags(executor, slurm))
    detect(resolved, force)
    listed = methods or (["flow"] if "flow" in resolved.detect.methods else resolved.detect.methods)
    shown = [score_column(modality, method) for method in listed for modality in MODALITIES]
    _listing(resolved, lambda columns: [c for c in shown if c in columns], top_k)


@detect_app.command("cosine")
def detect_cosine(models: Models = None, top_k: TopK = 5, force: Force = False, executor: ExecutorKind = None,
                  slurm: SlurmFlag = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """The original's `detect cosine`: runs `fmb detect`. Prefer `fmb detect`.

    Lists the image/spectrum misalignment scores: mismatch_cosine (1 - cosine, for models whose
    spaces are aligned by training), mismatch (a learned critic, for every model), mismatch_residual."""
    from fmb.detect.scores import MISMATCH_COLUMNS

    resolved = build_config(config, set_, name, **{"detect.models": models},
                            **executor_flags(executor, slurm))
    detect(resolved, force)
    _listing(resolved, lambda columns: [c for c in MISMATCH_COLUMNS if c in columns], top_k)


Fusion = Annotated[str, typer.Option("--fusion", help="Fused score listed: geo (the original's default), min, avg, "
                                     "all, max, or cauchy (fmb's default ranking).")]


@detect_app.command("multimodal")
def detect_multimodal(models: Models = None, fusion: Fusion = "geo", top_k: TopK = 5, force: Force = False,
                      executor: ExecutorKind = None, slurm: SlurmFlag = False, config: TaskFile = None,
                      set_: Sets = None, name: RunName = None) -> None:
    """The original's `detect multimodal`: runs `fmb detect`. Prefer `fmb detect`.

    Lists the fused ranking fused_<fusion> (fused_geo = p_mis * sqrt(p_img * p_spec), as the
    original's score_mm_geo) and uplift; every fused column is in the score table."""
    from fmb.detect.scores import FUSED, UPLIFT

    column = f"fused_{fusion}"
    if column not in FUSED:
        raise ConfigError(f"--fusion {fusion!r}: choose from {', '.join(c.removeprefix('fused_') for c in FUSED)}")
    resolved = build_config(config, set_, name, **{"detect.models": models},
                            **executor_flags(executor, slurm))
    detect(resolved, force)
    _listing(resolved, lambda columns: [c for c in (column, UPLIFT) if c in columns], top_k)


ObjectId = Annotated[Optional[int], typer.Option("--object-id", help="Object to draw (default: the first indexed).")]
Save = Annotated[Optional[Path], typer.Option("--save", help="PNG path (default runs/<name>/figures/object_<id>.png).")]


@viz_app.command("single-object")
def viz_single_object(object_id: ObjectId = None, save: Save = None,
                      smooth: Annotated[Optional[float], typer.Option("--smooth", help="Spectrum smoothing, pixels.")] = None,
                      config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """The original's `viz single-object`: runs `fmb data show ID`. Prefer `fmb data show`.

    One object: RGB composite, VIS/Y/J/H bands and the rest-frame spectrum with lines labelled."""
    data_show(object_id, save, None, smooth, config, set_, name)


@app.command("display", rich_help_panel="The original FMB's commands")
def display_command(
    index: Annotated[int, typer.Option("--index", min=0, help="Position of the object in the run's index "
                                       "(every split together).")] = 0,
    object_id: ObjectId = None,
    save: Save = None,
    show_bands: Annotated[bool, typer.Option("--show-bands", help="Accepted: the figure always shows the bands.")] = False,
    no_gui: Annotated[bool, typer.Option("--no-gui", help="Accepted: fmb never opens a window, it writes a PNG.")] = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """The original's `display`: runs `fmb data show` on the object at --index. Prefer `fmb data show ID`.

    One object's RGB composite, VIS/Y/J/H bands and rest-frame spectrum, written to a PNG."""
    if object_id is None:
        from fmb.data.index import ObjectIndex

        ids = ObjectIndex.load(build_config(config, set_, name, allow_new_run=True).layout.data.dir).ids
        if index >= len(ids):
            raise ConfigError(f"--index {index}: the run's index holds {len(ids)} objects (0 to {len(ids) - 1})")
        object_id = int(ids[index])
    data_show(object_id, save, None, None, config, set_, name)


ROOTS = ("data", "embeddings", "checkpoints", "runs", "cache")


def run_roots(resolved: ResolvedConfig) -> dict[str, str]:
    """The original's roots for this run: its data source, and its directories under runs/<name>/."""
    from fmb.data.sources import parse_source

    source = parse_source(resolved.data.source)
    local = resolved.path(source.location)
    layout = resolved.layout
    return {"data": str(local) if source.kind != "hf" or local.exists() else resolved.data.source,
            "embeddings": str(layout.embeddings_dir), "checkpoints": str(layout.models_dir),
            "runs": str(layout.root), "cache": str(layout.cache(""))}


def _root_flag(root: str):
    return typer.Option(f"--{root}", help=f"Print only the {root} path.")


@app.command("paths", rich_help_panel="The original FMB's commands")
def paths_command(
    data: Annotated[bool, _root_flag("data")] = False,
    embeddings: Annotated[bool, _root_flag("embeddings")] = False,
    checkpoints: Annotated[bool, _root_flag("checkpoints")] = False,
    runs: Annotated[bool, _root_flag("runs")] = False,
    cache: Annotated[bool, _root_flag("cache")] = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """The original's `paths`: where this run's data, embeddings, checkpoints (adapted models), run
    directory and cache are. With a flag, just that path (for `$(fmb paths --data)`)."""
    roots = run_roots(build_config(config, set_, name, allow_new_run=True))
    asked = [root for root, flag in zip(ROOTS, (data, embeddings, checkpoints, runs, cache)) if flag]
    for root in asked or ROOTS:
        typer.echo(roots[root] if asked else f"{root:12s}{roots[root]}")

"""`fmb import`: the original research code's files brought into a run (docs/migrating.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from fmb.cli.common import Force, RunName, Sets, TaskFile, app, build_config, log, registered_model
from fmb.cli.stages import import_embeddings

import_app = typer.Typer(help="Bring the original research code's files into a run: its .pt embeddings and its "
                         "CSV score files.", no_args_is_help=True)
app.add_typer(import_app, name="import", rich_help_panel="Setup and migration")

Model = Annotated[str, typer.Option("--model", "-m", help="The registered model the file belongs to.",
                                    callback=registered_model)]


@import_app.command("embeddings")
def import_embeddings_command(
    file: Annotated[Path, typer.Argument(help="The original's .pt file: a list of records (object_id, "
                                         "embedding_images/spectra/joint or AION's embedding_hsc/spectrum/hsc_desi) "
                                         "or a dict of columns.", exists=True, dir_okay=False)],
    model: Model,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Import an original .pt embedding file as this run's embed stage of MODEL (runs/<name>/embeddings/<model>/),
    so detect, analyze and the app read it. Loaded without running code (weights_only); every
    record is checked first. Same as `fmb embed MODEL --import-pt FILE`."""
    import_embeddings(build_config(config, set_, name, allow_new_run=True), model, file, force)


@import_app.command("scores")
def import_scores_command(
    files: Annotated[list[Path], typer.Argument(help="The original's anomaly_scores_<m>.csv (density), "
                                                "cosine_scores_<m>.csv (cosine) and/or multimodal/all_scores.csv "
                                                "(fusion: the rows of --model).", exists=True, dir_okay=False)],
    model: Model,
    force: Annotated[bool, typer.Option("--force", help="Replace the run's score table of MODEL.")] = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Import the original's CSV scores of one model as its score table (runs/<name>/scores/<model>.parquet):
    score_<modality>_flow (the density NLL), mismatch_cosine (1 - cosine), fused_geo, fused_min,
    uplift, each with fmb's pct_ and rank_. Analyses read it; a later `fmb detect` replaces it."""
    from fmb.detect.legacy import import_scores

    resolved = build_config(config, set_, name, allow_new_run=True)
    out = resolved.layout.scores.table(model)
    frame = import_scores(files, model, out, replace=force)
    scores = [c for c in frame.columns if not c.startswith(("pct_", "rank_")) and c != "object_id"]
    log(f"imported {len(frame)} objects of {model} ({', '.join(scores)}) into {out}")

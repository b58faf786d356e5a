"""The discovery app's files in and out: `fmb export` (a run's candidates as FITS, VOTable or CSV,
and their cutouts and spectra) and `fmb labels import` (labels from such a file, merged as events)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmb.cli.common import RunName, Sets, TaskFile, app, build_config, log

labels_app = typer.Typer(help="The labels of a run's discovery app (`fmb app`).", no_args_is_help=True)
app.add_typer(labels_app, name="labels", rich_help_panel="Discovery")


@app.command("export", rich_help_panel="Discovery")
def export_command(
    out: Annotated[Path, typer.Argument(help="File to write: .fits, .vot (VOTable), .csv, or .reg (a DS9 region "
                                        "file: a circle and label per object, for DS9 or Aladin).", dir_okay=False)],
    top: Annotated[int, typer.Option("--top", help="How many of the ranking's first objects, beside every labelled "
                                     "one.", min=0)] = 100,
    model: Annotated[Optional[str], typer.Option("--model", help="Model whose ranking picks the top; default: the "
                                                 "run's first scored model.")] = None,
    ranking: Annotated[Optional[str], typer.Option("--ranking", help="Score column of that ranking; default: its "
                                                   "headline ranking.")] = None,
    objects: Annotated[bool, typer.Option("--objects", help="Also write each object's cutouts and spectrum as FITS, "
                                          "to <out without its suffix>-objects/<id>.fits (out/top.csv: out/top-objects/).")] = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Write a run's labelled and top-ranked objects (ids, RA/Dec, scores, ranks, labels, tags, notes)
    as a table TOPCAT, Aladin or astropy reads."""
    from fmb.app.export import export_run

    done = export_run(build_config(config, set_, name), out, model, ranking, top, objects)
    log(f"wrote {done['path']}: {done['objects']} objects ({done['labelled']} labelled) from {done['ranking']}")
    if objects:
        log(f"wrote {done['object_files']} object files to {done['objects_dir']}")


@labels_app.command("import")
def labels_import_command(
    path: Annotated[Path, typer.Argument(help="Labels to merge: an `fmb export` table (.fits, .vot, .csv) or any "
                                         ".csv/.parquet/.fits/.vot with object_id, interest and optionally tags "
                                         "and note.", exists=True, dir_okay=False)],
    user: Annotated[Optional[str], typer.Option("--user", help="Whose labels they are, as the log records it; "
                                                "default: each row's own user (an `fmb export` carries it), else "
                                                "'import'.")] = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Merge labels from a file into a run's label log: each row is one more event (nothing is
    overwritten; the latest label of an object is the one in effect, and `undo` history is kept)."""
    from fmb.app.export import import_run_labels

    resolved = build_config(config, set_, name, allow_new_run=True)
    count = import_run_labels(resolved, path, user)
    log(f"imported {count} labels from {path} into {resolved.layout.app.labels_db}")

"""`fmb config` and `fmb data`: the resolved configuration, and stage 0 (synthesise, index, validate, look)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from fmb.cli.common import Force, RunName, Sets, SourceOption, TaskFile, app, build_config, console, log, run_stage
from fmb.errors import ConfigError

config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Stage 0: synthesise, index, validate and look at input data.", no_args_is_help=True)
app.add_typer(config_app, name="config", rich_help_panel="Pipeline")
app.add_typer(data_app, name="data", rich_help_panel="Pipeline")


@config_app.command("show")
def config_show(config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Print every configuration value and where it came from (default, project file, task file, CLI)."""
    resolved = build_config(config, set_, name, allow_new_run=True)
    table = Table(title=f"fmb configuration (root {resolved.root})")
    for column in ("key", "value", "from"):
        table.add_column(column)
    for key, value, origin in resolved.explain():
        table.add_row(key, repr(value), origin, style=None if origin == "default" else "bold")
    # whole keys, values and origins when read by a program or a file (no terminal width to fit)
    (console if console.is_terminal else Console(file=console.file, width=10_000)).print(table)


@data_app.command("synth")
def data_synth(
    n: Annotated[Optional[int], typer.Option("--n", help="Number of objects (-n, one dash, is the run's name).")] = None,
    seed: Annotated[Optional[int], typer.Option(help="Random seed (same seed, same survey).")] = None,
    out: Annotated[Optional[str], typer.Option(help="Output directory.")] = None,
    workers: Annotated[Optional[int], typer.Option(help="Worker processes.")] = None,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Generate the synthetic Euclid x DESI survey: Parquet rows, catalog.parquet and truth.parquet.

    Galaxies (bulge + disc, PSF-convolved, Euclid-like depth) with DESI-like spectra, plus rare
    injected anomalies (artefacts, QSOs, lenses, mergers, stars, extreme emitters, mis-paired rows).
    """
    if n is None and name is not None and name.isdigit() and "-n" in sys.argv:  # `--n 200` is the count
        raise ConfigError(f"-n {name} names the run {name!r}; the number of objects is --n {name} (two dashes)")
    resolved = build_config(config, set_, name, allow_new_run=True,
                            **{"synth.n": n, "seed": seed, "synth.out": out, "synth.workers": workers})
    summary = run_stage(resolved, "synth", force)
    if summary is None:
        return
    console.print(f"wrote {summary['n']} objects to {summary['out_dir']} in {summary['seconds']:.1f} s")
    console.print("classes: " + ", ".join(f"{k} {v}" for k, v in summary["classes"].items()))


@data_app.command("index")
def data_index(
    source: SourceOption = None,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Map object_id -> (file, row) reading only the id column; records duplicate ids and unreadable files."""
    resolved = build_config(config, set_, name, allow_new_run=True, **{"data.source": source})
    summary = run_stage(resolved, "index", force)
    if summary is not None:
        console.print(f"indexed {summary['objects']} objects in {summary['shards']} shards -> {resolved.layout.data.index}"
                      + (f"  ({summary['rejected']} rejects, see {resolved.layout.data.rejects})" if summary["rejected"] else ""))


@data_app.command("validate")
def data_validate(
    source: SourceOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Check again and stop at the first invalid object or "
                                         "dropped modality instead of skipping it (this command only).")] = False,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Check every row against the input contract; write runs/<name>/data/rejects.parquet.

    Skipped objects, dropped modalities and repairs are listed there by object, location and field.
    """
    from fmb.data.tasks import validate

    resolved = build_config(config, set_, name, allow_new_run=True, **{"data.source": source})
    # a strict check is this command's own: the same stage run again stricter, no setting changed, so
    # that neither the run nor any stage key remembers it (`data.on_invalid` is the setting to keep)
    summary = run_stage(resolved, "validate", force or strict,
                        action=(lambda config, log: validate(config, strict=True)) if strict else None) or {}
    for key, value in summary.items():
        console.print(f"{key}: {value}")


@data_app.command("show")
def data_show(
    object_id: Annotated[Optional[int], typer.Argument(help="Object to draw (default: the first indexed).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG path (default runs/<name>/figures/object_<id>.png).")] = None,
    source: SourceOption = None,
    smooth: Annotated[Optional[float], typer.Option(help="Gaussian smoothing of the spectrum, pixels "
                                                    "(show.smooth_px).")] = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Draw one object: RGB composite, VIS/Y/J/H bands and the rest-frame spectrum with lines labelled."""
    from fmb.data.tasks import show

    resolved = build_config(config, set_, name, allow_new_run=True,
                            **{"show.object_id": object_id, "data.source": source, "show.smooth_px": smooth})
    log(f"wrote {show(resolved, out)}")

"""`fmb setup download` and `fmb setup check`: parse the flags, call `fmb.setup`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from fmb.cli.common import RunName, Sets, TaskFile, build_config, log

setup_app = typer.Typer(
    help="Prepare machines for offline clusters: `download` fetches every hub file a run reads (weights, "
    "dataset) into the Hugging Face cache on a login node and locks their commits and hashes; `check` "
    "verifies, offline, what a compute node has.",
    no_args_is_help=True,
)

ModelsOption = Annotated[Optional[list[str]], typer.Option(
    "--model", "-m", help="A model (repeatable); default: run.models of the configuration.")]
DataOption = Annotated[bool, typer.Option("--data/--no-data", help="Also the data (an hf: source's dataset).")]
LockOption = Annotated[Optional[Path], typer.Option(
    "--lock", help="The lock file; default: fmb.lock.json in the project root (beside fmb.yaml).", dir_okay=False)]


@setup_app.command("download")
def download(
    models: ModelsOption = None,
    revision: Annotated[Optional[list[str]], typer.Option(
        "--revision", help="NAME=REV: fetch this revision (commit, tag or branch) for a model, `data` or a hub "
        "repository id (repeatable); default: models.<name>.revision, else the lock's commit, else main.")] = None,
    data: DataOption = True,
    lock: LockOption = None,
    config: TaskFile = None,
    set_: Sets = None,
) -> None:
    """Fetch the models' weights and the dataset into the Hugging Face cache (needs the hub) and write the lock."""
    from fmb.setup.download import download as fetch

    resolved = build_config(config, set_, None)
    path = fetch(resolved, models, revision or [], lock and resolved.path(lock), data, log)
    log(f"wrote {path}; on the compute node: export HF_HUB_OFFLINE=1 and run `fmb setup check`")


@setup_app.command("check")
def check(
    models: ModelsOption = None,
    gpu: Annotated[bool, typer.Option("--gpu", help="Fail when no usable CUDA GPU is found.")] = False,
    min_free_gb: Annotated[float, typer.Option("--min-free-gb", min=0, help="Free disk the run needs, GB.")] = 10.0,
    data: DataOption = True,
    lock: LockOption = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Verify offline what this node has for a run; one line per item; exit 1 if anything required fails."""
    from fmb.setup.check import check as verify

    resolved = build_config(config, set_, name, allow_new_run=True)
    report = verify(resolved, models, lock and resolved.path(lock), gpu, min_free_gb, data, log)
    raise typer.Exit(report.exit_code)

"""What every command module of the CLI shares: the root app, the console, option types, and the
one way a command builds its config and runs its stage."""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console

from fmb.config import ResolvedConfig, load_config
from fmb.errors import ConfigError
from fmb.layout import RUNS_DIR
from fmb.plugins import encoder_names

app = typer.Typer(
    name="fmb",
    help="Foundation-models benchmark and anomaly discovery for Euclid x DESI (and surveys like it).\n\n"
    "Every command reads one configuration: CLI flags > task file (--config) > project file (fmb.yaml) > "
    "defaults, and writes under runs/<name>/. See `fmb config show`.\n\n"
    "A failure prints one line saying what to do; add --debug anywhere (or set FMB_DEBUG=1) to see the traceback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console()

TaskFile = Annotated[
    Optional[list[Path]],
    typer.Option("--config", "-c", help="Task file (YAML) over the project file; repeatable, later files win.",
                 exists=True, dir_okay=False),
]
Sets = Annotated[
    Optional[list[str]], typer.Option("--set", "-s", help="Override any key: --set synth.n=500 (repeatable).")
]
SourceOption = Annotated[Optional[str], typer.Option("--source", help="Parquet dir, hf:<dataset id> or desi:<dir>.")]
RunName = Annotated[Optional[str], typer.Option(
    "--run", "--name", "-n", help="The run: its name (outputs go to runs/<name>/) or its directory runs/<name>. "
    "An existing run starts from the settings its stages last ran with; flags, --config and --set still win.")]
Force = Annotated[bool, typer.Option("--force", help="Redo the stage even when its config and inputs are unchanged.")]
ExecutorKind = Annotated[Optional[str], typer.Option(
    "--executor", help="Where the stage runs: local (here; shards on executor.workers processes) or slurm "
    "(sharded stages as job arrays, any other stage as one job; executor.slurm.*); sets executor.kind.")]
SlurmFlag = Annotated[bool, typer.Option("--slurm", help="The original code's spelling of --executor slurm.")]
Preset = Annotated[Optional[str], typer.Option(help="full (released size) or tiny (tests, demo).")]


def registered_model(name: str) -> str:
    """A model argument: a registered encoder, else one line naming the registered ones."""
    if name not in encoder_names():
        raise ConfigError(f"unknown model {name!r}; registered models: {', '.join(encoder_names())}")
    return name


ModelName = Annotated[str, typer.Argument(help="A registered model: " + ", ".join(encoder_names())
                                          + " (pixels is the PCA reference).", callback=registered_model)]


def executor_flags(kind: str | None, slurm: bool) -> dict:
    return {"executor.kind": "slurm" if slurm else kind}


def build_config(task: list[Path] | None, sets: list[str] | None, run: str | None, allow_new_run: bool = False,
                 **flags: Any) -> ResolvedConfig:
    """The config of a command: `run` is the --run/--name value (a name or runs/<name>). Keys that
    change results and differ from what the run last ran with are said before anything is written.
    A run named that does not exist is an error (a typo would otherwise read the project's defaults,
    or start an empty run), unless `allow_new_run`: the command may be a run's first (run, data, adapt,
    import) or shows what a run would be (config show, paths, setup check), so a new name is one."""
    root, name = run_reference(run)
    resolved = load_config(task, cli={"name": name, **flags}, sets=sets, root=root)
    if not allow_new_run and name is not None and not resolved.run_dir.is_dir():
        raise ConfigError(missing_run(resolved.run_dir))
    changes = resolved.run_changes()
    if changes:
        log(f"run {resolved.name}: settings differ from those its stages last ran with: {'; '.join(changes)}")
    return resolved


def missing_run(run_dir: Path) -> str:
    """What to say of a run that does not exist: the runs there are, the closest first."""
    import difflib

    runs = sorted(path.name for path in run_dir.parent.iterdir() if path.is_dir() and not path.name.startswith(".")) \
        if run_dir.parent.is_dir() else []
    close = difflib.get_close_matches(run_dir.name, runs, n=1)
    known = f"; did you mean {close[0]}?" if close else f"; runs there: {', '.join(runs)}" if runs else ""
    return f"--run {run_dir.name}: no such run in {run_dir.parent}{known} (`fmb run --run {run_dir.name}` starts one)"


def log(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def run_stage(resolved: ResolvedConfig, name: str, force: bool, action=None, check=None):
    """Run one stage through the engine `fmb run` uses; returns its summary, or None when it was
    skipped because nothing it depends on changed (said on the console). Under `executor.kind:
    slurm` a stage that does not run as shards is submitted as one job (`on_executor`); `action`
    (the stage done another way, e.g. an import) runs in this process, after `check`."""
    from fmb.run import run_one
    from fmb.run.executors import on_executor
    from fmb.run.stages import stage_named
    from fmb.stage import with_action

    try:
        stage = stage_named(resolved, name)
    except KeyError:
        registered_model(name.partition(":")[2])  # "adapt:<model>" of a model not registered: one line
        raise
    stage = on_executor(resolved, stage) if action is None else with_action(stage, action, check)  # an import runs here
    outcome = run_one(resolved, stage, log, force)
    if outcome.status == "skipped":
        console.print(f"{name}: nothing changed since it last ran (--force to redo it)")
    return outcome.result


def run_reference(value: str | None) -> tuple[Path | None, str | None]:
    """(project root or None, run name) of a run given by name (`q1`) or by its directory
    (`runs/q1`, `/data/project/runs/q1`)."""
    if value is None or "/" not in value.strip("/"):
        return None, value.strip("/") if value else value
    path = Path(value)
    if path.parent.name != RUNS_DIR:
        raise ConfigError(f"--run {value!r}: give a run name or a run directory runs/<name>")
    root = path.parent.parent
    return (root if str(root) not in ("", ".") else None), path.name


def reflow_help(typer_app: typer.Typer) -> None:
    """Give every command of `typer_app` (and of its groups) its help with each paragraph's lines
    joined. Typer's rich help keeps a docstring's line breaks inside a paragraph, which then break
    again where the terminal wraps: ragged help. Call once every command is registered."""
    for info in typer_app.registered_commands:
        text = info.help or (info.callback.__doc__ if info.callback else None)
        if text:
            info.help = reflowed(text)
    for group in typer_app.registered_groups:
        reflow_help(group.typer_instance)


def reflowed(text: str) -> str:
    """`text` (a docstring) with each paragraph's lines joined by spaces, except a paragraph that is
    laid out by hand (an indented line, a list item or a table row), which is kept as written."""
    def laid_out(paragraph: str) -> bool:
        return any(line.startswith((" ", "*", "-", "|", "\b")) for line in paragraph.splitlines())

    paragraphs = inspect.cleandoc(text).split("\n\n")
    return "\n\n".join(p if laid_out(p) else " ".join(line.strip() for line in p.splitlines()) for p in paragraphs)

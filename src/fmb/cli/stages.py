"""The pipeline's stage commands: `fmb adapt`, `fmb embed`, `fmb detect`, `fmb report`, `fmb run`, `fmb status`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmb.cli.common import (ExecutorKind, Force, ModelName, Preset, RunName, Sets, SlurmFlag, TaskFile, app,
                            build_config, console, executor_flags, log, run_stage)
from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.plugins import detector_names

detect_app = typer.Typer(help="Stage 3: anomaly scores (density flow, PyOD baselines, misalignment, fusion).")


@app.command("adapt", rich_help_panel="Pipeline")
def adapt_command(
    model: ModelName,
    preset: Preset = None,
    force: Force = False,
    executor: ExecutorKind = None,
    slurm: SlurmFlag = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Stage 1: adapt a model to the survey (fit the PCA for pixels); weights go to runs/<name>/models/<model>/.

    Trains on a seeded id-hash split with validation, early stopping and resumable checkpoints;
    settings under models.<model>.adapt (see configs/adapt/). With --slurm the adaptation runs as
    one SLURM job (executor.slurm.*: set gpus_per_task for a GPU).
    """
    resolved = build_config(config, set_, name, allow_new_run=True, **{f"models.{model}.preset": preset},
                            **executor_flags(executor, slurm))
    from fmb.models.tasks import adapt_on_every_rank

    # under torchrun every rank trains; rank 0 alone runs the engine (cache check, outputs, state)
    summary = adapt_on_every_rank(resolved, model, lambda action: run_stage(resolved, f"adapt:{model}", force, action))
    if summary is not None:
        console.print(f"adapted {model}: {summary}")


@app.command("embed", rich_help_panel="Pipeline")
def embed_command(
    model: ModelName,
    preset: Preset = None,
    export_pt: Annotated[Optional[Path], typer.Option(help="Also write the original research code's .pt format here.")] = None,
    import_pt: Annotated[Optional[Path], typer.Option(help="Import an original .pt embedding file instead of "
                                                      "extracting (as `fmb import embeddings`).", exists=True)] = None,
    force: Force = False,
    executor: ExecutorKind = None,
    slurm: SlurmFlag = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Stage 2: per-object image, spectrum and joint embeddings -> runs/<name>/embeddings/<model>/.

    Sharded Parquet parts + manifest.json; a killed run resumes where it stopped, objects that fail
    validation are skipped and recorded in the rejects table. With --executor slurm (or
    executor.workers > 1) the work units are cut into shards run as SLURM array tasks (or local
    processes); rerunning the same command runs only the shards not done.
    """
    from fmb.embed import store  # torch and the model packages load only when needed

    resolved = build_config(config, set_, name, allow_new_run=import_pt is not None,  # an import, as `fmb import`
                            **{f"models.{model}.preset": preset}, **executor_flags(executor, slurm))
    directory = resolved.layout.embeddings(model).dir
    if import_pt is not None:
        import_embeddings(resolved, model, import_pt, force)
    else:
        summary = run_stage(resolved, f"embed:{model}", force)
        if summary is not None:
            log(f"{summary['objects']} objects embedded by {model} in {directory} "
                          f"({summary['units_done_now']} of {summary['units']} parts written now; weights: {summary['weights']})")
    if export_pt is not None:
        console.print(f"exported {store.export_pt(directory, export_pt)} objects to {export_pt}")


def import_embeddings(resolved: ResolvedConfig, model: str, path: Path, force: bool) -> None:
    """The embed stage of `model`, done by importing an original `.pt` file: recorded like any other
    run of it, so the stages after it read the imported embeddings and `fmb run` skips it. The file
    is read and checked before anything is written; a file with the content of the last import is
    not imported again unless forced (said on the console)."""
    from fmb.embed.legacy import read_embeddings
    from fmb.embed.store import import_signature, write_embeddings

    directory = resolved.layout.embeddings(model).dir
    signature = import_signature(model, path)
    if not force and (import_signature(model, None, directory) or {}).get("imported_sha256") == signature["imported_sha256"]:
        log(f"{directory} already holds the embeddings imported from {path} (same content): nothing imported "
            "(--force imports it again)")
        return
    read: dict = {}

    def check(_config) -> None:
        read["embeddings"] = read_embeddings(path)

    def imported(config, _log):
        return {"objects": write_embeddings(config.layout.embeddings(model).dir, signature, *read["embeddings"])}

    summary = run_stage(resolved, f"embed:{model}", True, imported, check)
    if summary is not None:
        log(f"imported {summary['objects']} objects into {directory}")


Models = Annotated[Optional[list[str]], typer.Option("--model", help="Model to score (repeatable); default: all embedded.")]
Methods = Annotated[Optional[list[str]], typer.Option("--method", help="A registered detector (repeatable): "
                                                      + ", ".join(detector_names()) + ".")]


@detect_app.callback(invoke_without_command=True)
def detect_command(
    ctx: typer.Context,
    models: Models = None,
    methods: Methods = None,
    force: Force = False,
    executor: ExecutorKind = None,
    slurm: SlurmFlag = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Score every embedded object: per-modality density (cross-fitted flow) and PyOD baselines,
    learned image/spectrum misalignment, and rank fusion -> runs/<name>/scores/<model>.parquet.

    Detectors are saved beside the scores; `fmb detect score` applies them to new objects. With
    --executor slurm (or executor.workers > 1) the detectors are fitted on a sample as one job, then
    every embedding part is scored as shards (SLURM array tasks or local processes), then merged.
    """
    if ctx.invoked_subcommand is None:
        detect(build_config(config, set_, name, **{"detect.models": models, "detect.methods": methods},
                            **executor_flags(executor, slurm)), force)


def detect(resolved: ResolvedConfig, force: bool) -> None:
    """The detect stage, with each model's summary printed."""
    for model, summary in (run_stage(resolved, "detect", force) or {}).items():
        console.print(f"{model}: {summary}")


@detect_app.command("score")
def detect_score(
    model: ModelName,
    embeddings: Annotated[Path, typer.Option(help="Embedding directory of the new objects.", exists=True, file_okay=False)],
    out: Annotated[Path, typer.Option(help="Parquet file for their scores.")],
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Score new objects with the detectors saved by `fmb detect` (no refitting)."""
    from fmb.detect import tasks as detect_tasks

    resolved = build_config(config, set_, name)
    console.print(f"wrote {detect_tasks.score_new(resolved, model, embeddings, out)}")


app.add_typer(detect_app, name="detect", rich_help_panel="Pipeline")


@app.command("report", rich_help_panel="Pipeline")
def report_command(force: Force = False, executor: ExecutorKind = None, slurm: SlurmFlag = False,
                   config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Write runs/<name>/report.html: one self-contained page with the data summary, models and
    embeddings, detection quality, agreement, probes, galleries and similarity examples."""
    resolved = build_config(config, set_, name, **executor_flags(executor, slurm))
    run_stage(resolved, "report", force)
    console.print(f"report: {resolved.layout.report}")


@app.command("run", rich_help_panel="Pipeline")
def run_command(
    from_: Annotated[Optional[str], typer.Option("--from", help="Rerun this stage and everything downstream of it.")] = None,
    only: Annotated[Optional[str], typer.Option("--only", help="Run just this stage (or family, e.g. embed).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Say for every stage whether it would run or be "
                                          "skipped, and why; run nothing.")] = False,
    executor: ExecutorKind = None,
    slurm: SlurmFlag = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Run the whole pipeline from one config: (synth) index, validate, adapt and embed each model,
    detect, evaluate, agreement, probes, similarity, figures, report.

    A stage is skipped when its config sections and input files are unchanged since it last
    finished; an interrupted stage resumes. Ends with a summary and the report's path. With --slurm
    every stage that runs goes to SLURM: job arrays for embed and detect, one job for each other.
    """
    from fmb.run.engine import execute, plan_report, select
    from fmb.run.executors import on_executor
    from fmb.run.stages import build_stages

    resolved = build_config(config, set_, name, allow_new_run=True, **executor_flags(executor, slurm))
    plan = select([on_executor(resolved, stage) for stage in build_stages(resolved)], from_, only)
    if dry_run:
        for forecast in plan_report(resolved, plan):
            log(f"{forecast.stage:22s} {'run' if forecast.runs else 'skip':5s} {forecast.reason}")
        return
    outcomes = execute(resolved, plan, log=log)
    table = Table(title=f"fmb run {resolved.name}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(outcome.stage, outcome.status, f"{outcome.seconds:.1f}" if outcome.status == "ran" else "", outcome.note)
    console.print(table)
    report = resolved.layout.report
    if report.is_file():
        console.print(f"report: {report}")
    if resolved.layout.scores.dir.is_dir():
        console.print(f"browse, label and re-rank its objects: fmb app --run {resolved.name}")


@app.command("verify", rich_help_panel="Pipeline")
def verify_command(config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Check every embedding part of the run against the sha256 its manifest records (reads them all);
    a part that fails is named, and the next `fmb embed MODEL` redoes exactly those parts."""
    from fmb.embed.store import damaged_parts

    resolved = build_config(config, set_, name)
    damaged = []
    for model in resolved.run.models:
        directory = resolved.layout.embeddings(model).dir
        found = damaged_parts(directory, full=True)
        parts = len(resolved.layout.embeddings(model).parts()) if directory.is_dir() else 0
        log(f"{model}: {parts} parts, {len(found)} damaged" if resolved.layout.embeddings(model).manifest.is_file()
            else f"{model}: no finished embeddings")
        damaged += [(model, path, why) for path, why in found]
    if damaged:
        model, path, why = damaged[0]
        raise FmbError(f"{len(damaged)} damaged embedding part(s), e.g. {path} ({why}); run `fmb embed {model}` to "
                       "redo exactly those parts")
    log(f"run {resolved.name}: every embedding part matches its manifest")


@app.command("status", rich_help_panel="Pipeline")
def status_command(config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Where the run stands: each stage's last run, and for stages run as shards (--executor slurm
    or local workers) the shards done, running, failed (with the task's log) and not started.
    Rerunning the same stage command runs only the shards that are not done."""
    from fmb.run.status import shard_counts, stage_states

    resolved = build_config(config, set_, name)
    states = stage_states(resolved)
    if not states:
        console.print(f"run {resolved.name}: nothing has run yet ({resolved.layout.root})")
    table = Table(title=f"fmb status {resolved.name}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for stage, entry in states.items():
        attempt = entry.get("attempt") or {}
        note = (entry.get("error") or "")[:120]
        if attempt:  # a later run that has not replaced the outputs: running, killed or failed
            note = (f"a later run {attempt.get('status', '?')} (or was killed)" if attempt.get("status") == "running"
                    else "a later run was interrupted (Ctrl+C); running it again resumes it"
                    if attempt.get("status") == "interrupted"
                    else f"a later run failed: {(attempt.get('error') or '')[:100]}") + "; these outputs are kept"
        table.add_row(stage, entry.get("status", "?"), str(entry.get("seconds", "")), note)
    if states:
        console.print(table)
    for counts in shard_counts(resolved):
        log(f"{counts.stage}: {counts.shards} shards on {counts.executor}: {counts.done} done, {counts.running} "
            f"running, {len(counts.failed)} failed, {counts.not_started} not started")
        for index, error, line in counts.failed:
            log(f"  shard {index} failed: {error} (log {line})")

"""The `fmb` command line: parse, build the config, call one function per command. No logic here."""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from fmb import __version__
from fmb.config import ResolvedConfig, find_root, load_config
from fmb.errors import FmbError
from fmb.layout import crash_logs
from fmb.plugins import detector_names, encoder_names

app = typer.Typer(
    name="fmb",
    help="Foundation-models benchmark and anomaly discovery for Euclid x DESI (and surveys like it).\n\n"
    "Every command reads one configuration: CLI flags > task file (--config) > project file (fmb.yaml) > "
    "defaults, and writes under runs/<name>/. See `fmb config show`.\n\n"
    "A failure prints one line saying what to do; add --debug anywhere (or set FMB_DEBUG=1) to see the traceback.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
config_app = typer.Typer(help="Inspect the resolved configuration.", no_args_is_help=True)
data_app = typer.Typer(help="Stage 0: synthesise, index, validate and look at input data.", no_args_is_help=True)
app.add_typer(config_app, name="config")
app.add_typer(data_app, name="data")
detect_app = typer.Typer(help="Stage 3: anomaly scores (density flow, PyOD baselines, misalignment, fusion).")
analyze_app = typer.Typer(help="Stage 4: analysis of the scores.", no_args_is_help=True)
app.add_typer(detect_app, name="detect")
app.add_typer(analyze_app, name="analyze")
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
RunName = Annotated[Optional[str], typer.Option("--name", "-n", help="Run name: outputs go to runs/<name>/.")]
Force = Annotated[bool, typer.Option("--force", help="Redo the stage even when its config and inputs are unchanged.")]
ExecutorKind = Annotated[Optional[str], typer.Option(
    "--executor", help="Where shards run: local (executor.workers processes here) or slurm (job arrays, "
    "executor.slurm.*); sets executor.kind.")]
SlurmFlag = Annotated[bool, typer.Option("--slurm", help="The original code's spelling of --executor slurm.")]


def _executor(kind: str | None, slurm: bool) -> dict:
    return {"executor.kind": "slurm" if slurm else kind}


def _config(task: list[Path] | None, sets: list[str] | None, name: str | None, **flags: Any) -> ResolvedConfig:
    return load_config(task, cli={"name": name, **flags}, sets=sets)


def _log(line: str) -> None:
    console.print(line, markup=False, highlight=False, soft_wrap=True)


def _stage(resolved: ResolvedConfig, name: str, force: bool, action=None):
    """Run one stage through the engine `fmb run` uses; returns its summary, or None when it was
    skipped because nothing it depends on changed (said on the console)."""
    from fmb.run import run_one
    from fmb.run.stages import stage_named
    from fmb.stage import with_action

    stage = stage_named(resolved, name)
    outcome = run_one(resolved, with_action(stage, action) if action else stage, _log, force)
    if outcome.status == "skipped":
        console.print(f"{name}: nothing changed since it last ran (--force to redo it)")
    return outcome.result


def _version(value: bool) -> None:
    if value:
        console.print(f"fmb {__version__}")
        raise typer.Exit()


@app.callback()
def main_options(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
) -> None:
    """fmb: foundation-models benchmark and anomaly discovery."""


@config_app.command("show")
def config_show(config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Print every configuration value and where it came from (default, project file, task file, CLI)."""
    resolved = _config(config, set_, name)
    table = Table(title=f"fmb configuration (root {resolved.root})")
    for column in ("key", "value", "from"):
        table.add_column(column)
    for key, value, origin in resolved.explain():
        table.add_row(key, repr(value), origin, style=None if origin == "default" else "bold")
    console.print(table)


@data_app.command("synth")
def data_synth(
    n: Annotated[Optional[int], typer.Option("--n", help="Number of objects.")] = None,
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
    resolved = _config(config, set_, name, **{"synth.n": n, "seed": seed, "synth.out": out, "synth.workers": workers})
    summary = _stage(resolved, "synth", force)
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
    resolved = _config(config, set_, name, **{"data.source": source})
    summary = _stage(resolved, "index", force)
    if summary is not None:
        console.print(f"indexed {summary['objects']} objects in {summary['shards']} shards -> {resolved.layout.data.index}"
                      + (f"  ({summary['rejected']} rejects, see {resolved.layout.data.rejects})" if summary["rejected"] else ""))


@data_app.command("validate")
def data_validate(
    source: SourceOption = None,
    strict: Annotated[bool, typer.Option("--strict", help="Stop at the first invalid object instead of skipping.")] = False,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Check every row against the input contract; write runs/<name>/data/rejects.parquet.

    Skipped objects, dropped modalities and repairs are listed there by object, location and field.
    """
    resolved = _config(config, set_, name, **{"data.source": source, "data.on_invalid": "error" if strict else None})
    summary = _stage(resolved, "validate", force) or {}
    for key, value in summary.items():
        console.print(f"{key}: {value}")


@data_app.command("show")
def data_show(
    object_id: Annotated[Optional[int], typer.Argument(help="Object to draw (default: the first indexed).")] = None,
    out: Annotated[Optional[Path], typer.Option(help="PNG path (default runs/<name>/figures/object_<id>.png).")] = None,
    source: SourceOption = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Draw one object: RGB composite, VIS/Y/J/H bands and the rest-frame spectrum with lines labelled."""
    from fmb.data.tasks import show

    resolved = _config(config, set_, name, **{"show.object_id": object_id, "data.source": source})
    console.print(f"wrote {show(resolved, out)}")


ModelName = Annotated[str, typer.Argument(help="A registered model: " + ", ".join(encoder_names())
                                          + " (pixels is the PCA reference).")]


@app.command("adapt")
def adapt_command(
    model: ModelName,
    preset: Annotated[Optional[str], typer.Option(help="full (released size) or tiny (tests, demo).")] = None,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Stage 1: adapt a model to the survey (fit the PCA for pixels); weights go to runs/<name>/models/<model>/.

    Trains on a seeded id-hash split with validation, early stopping and resumable checkpoints;
    settings under models.<model>.adapt (see configs/adapt/).
    """
    resolved = _config(config, set_, name, **{f"models.{model}.preset": preset})
    summary = _stage(resolved, f"adapt:{model}", force)
    if summary is not None:
        console.print(f"adapted {model}: {summary}")


@app.command("embed")
def embed_command(
    model: ModelName,
    preset: Annotated[Optional[str], typer.Option(help="full (released size) or tiny (tests, demo).")] = None,
    export_pt: Annotated[Optional[Path], typer.Option(help="Also write the original research code's .pt format here.")] = None,
    import_pt: Annotated[Optional[Path], typer.Option(help="Import a .pt embedding file instead of extracting.", exists=True)] = None,
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

    resolved = _config(config, set_, name, **{f"models.{model}.preset": preset}, **_executor(executor, slurm))
    directory = resolved.layout.embeddings(model).dir
    if import_pt is not None:  # the embed stage, done by importing: recorded like any other run of it
        def imported(_config, _log):
            return {"objects": store.import_pt(import_pt, directory, {"model": model, "imported_from": str(import_pt)})}

        summary = _stage(resolved, f"embed:{model}", force, imported)
        if summary is not None:
            console.print(f"imported {summary['objects']} objects into {directory}")
    else:
        summary = _stage(resolved, f"embed:{model}", force)
        if summary is not None:
            console.print(f"{summary['objects']} objects embedded by {model} in {directory} "
                          f"({summary['units_done_now']} of {summary['units']} parts written now; weights: {summary['weights']})")
    if export_pt is not None:
        console.print(f"exported {store.export_pt(directory, export_pt)} objects to {export_pt}")


@detect_app.callback(invoke_without_command=True)
def detect_command(
    ctx: typer.Context,
    models: Annotated[Optional[list[str]], typer.Option("--model", help="Model to score (repeatable); default: all embedded.")] = None,
    methods: Annotated[Optional[list[str]], typer.Option("--method", help="A registered detector (repeatable): "
                                                         + ", ".join(detector_names()) + ".")] = None,
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
    if ctx.invoked_subcommand is not None:
        return
    resolved = _config(config, set_, name, **{"detect.models": models, "detect.methods": methods},
                       **_executor(executor, slurm))
    for model, summary in (_stage(resolved, "detect", force) or {}).items():
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

    resolved = _config(config, set_, name)
    console.print(f"wrote {detect_tasks.score_new(resolved, model, embeddings, out)}")


@analyze_app.command("evaluate")
def analyze_evaluate(force: Force = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Detection quality against the synthetic survey's truth table: AP, AUROC, recall@1%/5%,
    per anomaly class and overall, for every model x score (CSV, Markdown, heatmap)."""
    resolved = _config(config, set_, name)
    _stage(resolved, "evaluate", force)
    files = resolved.layout.evaluation
    console.print(f"{files.metrics}, {files.summary.name}, {files.heatmap.name}")
    console.print(files.summary.read_text().split("\n## ")[0])


@analyze_app.command("agreement")
def analyze_agreement(force: Force = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """How far the anomaly rankings of all (model, modality, method) systems agree, on their common
    objects: Spearman matrix, top-k% Jaccard, retention@1%/10% with displacement histograms, and the
    objects one system ranks top 1% and another beyond 50% (tables and clustered heatmaps)."""
    summary = _stage(_config(config, set_, name), "agreement", force)
    if summary is not None:
        console.print(f"{summary['n_common']} common objects, {len(summary['systems'])} systems -> {summary['paths']['spearman']}")


@analyze_app.command("similarity")
def analyze_similarity(
    query: Annotated[Optional[list[int]], typer.Option("--query", "-q", help="Object id (repeatable); default: the top anomalies.")] = None,
    vector: Annotated[Optional[Path], typer.Option(help="A .npy vector to search with instead (needs --model and --modality).",
                                                   exists=True, dir_okay=False)] = None,
    models: Annotated[Optional[list[str]], typer.Option("--model", help="Model (repeatable); default: all embedded.")] = None,
    modality: Annotated[Optional[str], typer.Option(help="image, spectrum or joint; default: all.")] = None,
    k: Annotated[Optional[int], typer.Option("--k", help="Neighbours per query.")] = None,
    force: Force = False,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Nearest neighbours by cosine similarity (a persisted faiss index per model and modality, exact
    for small surveys, compressed for large ones), with a figure of each query and its neighbours,
    and where the neighbours of the top anomalies fall in the anomaly ranking.

    With --query only, this is the similarity stage (recorded, skipped when unchanged). A --vector,
    --model or --modality search is a one-off: it writes under runs/<name>/searches/ instead."""
    resolved = _config(config, set_, name, **{"analyze.similarity.k": k, "analyze.similarity.queries": query})
    if vector is None and models is None and modality is None:
        result = _stage(resolved, "similarity", force)
    else:
        import numpy as np

        from fmb.analyze.similarity import similarity

        search_vector = np.load(vector, allow_pickle=False) if vector is not None else None
        result = similarity(resolved, None, search_vector, log=_log, models=models, modality=modality,
                            out=resolved.layout.searches)
    if result is not None:
        console.print(f"wrote {result['neighbours']} and {len(result['figures'])} figures")


@analyze_app.command("probes")
def analyze_probes(force: Force = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """How well redshift, stellar mass and SFR (catalog columns) can be read from each embedding:
    k-fold Ridge and LightGBM R2 with their spread, the non-linear gap, SHAP-based effective
    dimensionality (PR, PR90, EPD with bootstrap errors) and a random-feature baseline."""
    summary = _stage(_config(config, set_, name), "probes", force)
    if summary is not None:
        console.print(f"wrote {summary['directory']}")


@analyze_app.command("figures")
def analyze_figures(force: Force = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Stage-5 figures: UMAP map per model (coloured by a catalog value, and a thumbnail mosaic),
    score distributions, and galleries of the top-ranked objects."""
    for label, path in (_stage(_config(config, set_, name), "figures", force) or {}).items():
        console.print(f"{label}: {path}")


@app.command("report")
def report_command(force: Force = False, config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Write runs/<name>/report.html: one self-contained page with the data summary, models and
    embeddings, detection quality, agreement, probes, galleries and similarity examples."""
    resolved = _config(config, set_, name)
    _stage(resolved, "report", force)
    console.print(f"report: {resolved.layout.report}")


@app.command("run")
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
    finished; an interrupted stage resumes. Ends with a summary and the report's path.
    """
    from fmb.run.engine import execute, plan_report, select
    from fmb.run.stages import build_stages

    resolved = _config(config, set_, name, **_executor(executor, slurm))
    plan = select(build_stages(resolved), from_, only)
    if dry_run:
        for forecast in plan_report(resolved, plan):
            _log(f"{forecast.stage:22s} {'run' if forecast.runs else 'skip':5s} {forecast.reason}")
        return
    outcomes = execute(resolved, plan, log=_log)
    table = Table(title=f"fmb run {resolved.name}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for outcome in outcomes:
        table.add_row(outcome.stage, outcome.status, f"{outcome.seconds:.1f}" if outcome.status == "ran" else "", outcome.note)
    console.print(table)
    report = resolved.layout.report
    if report.is_file():
        console.print(f"report: {report}")


@app.command("status")
def status_command(config: TaskFile = None, set_: Sets = None, name: RunName = None) -> None:
    """Where the run stands: each stage's last run, and for stages run as shards (--executor slurm
    or local workers) the shards done, running, failed (with the task's log) and not started.
    Rerunning the same stage command runs only the shards that are not done."""
    from fmb.run.status import shard_counts, stage_states

    resolved = _config(config, set_, name)
    states = stage_states(resolved)
    if not states:
        console.print(f"run {resolved.name}: nothing has run yet ({resolved.layout.root})")
    table = Table(title=f"fmb status {resolved.name}")
    for column in ("stage", "status", "seconds", "note"):
        table.add_column(column)
    for stage, entry in states.items():
        table.add_row(stage, entry.get("status", "?"), str(entry.get("seconds", "")), (entry.get("error") or "")[:120])
    if states:
        console.print(table)
    for counts in shard_counts(resolved):
        _log(f"{counts.stage}: {counts.shards} shards on {counts.executor}: {counts.done} done, {counts.running} "
             f"running, {len(counts.failed)} failed, {counts.not_started} not started")
        for index, error, log in counts.failed:
            _log(f"  shard {index} failed: {error} (log {log})")


@app.command("rerank")
def rerank_command(
    model: Annotated[Optional[str], typer.Option("--model", help="Model whose scores and joint embedding are "
                                                 "re-ranked; default: the run's first scored model.")] = None,
    ranking: Annotated[Optional[str], typer.Option("--ranking", help="Score column to start from; default: the "
                                                   "headline ranking (fused_cauchy).")] = None,
    method: Annotated[Optional[str], typer.Option("--method", help="Re-ranker: astronomaly (Astronomaly's neighbour "
                                                  "score, the default), gp_ei (Gaussian process, expected improvement) "
                                                  "or propagation (label propagation over the nearest-neighbour "
                                                  "graph).")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Parquet file to write; default: "
                                                "runs/<name>/app/rerank/<model>-<ranking>-<method>.parquet.",
                                                dir_okay=False)] = None,
    at: Annotated[Optional[float], typer.Option("--at", help="Use the labels as they stood at this unix time "
                                                "(replay); default: now.")] = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """Re-rank a run's objects from the labels given in its discovery app (`fmb app`): the same list
    the app shows for that re-ranker (object_id, score, rank; seeded by the config's seed)."""
    from fmb.app.rerank import rerank_run

    resolved = _config(config, set_, name)
    done = rerank_run(resolved, model, ranking, method, out, at)
    _log(f"wrote {done['path']}: {done['objects']} objects ranked by {done['method']} from {done['labels']} labels "
         f"({done['model']}, {done['ranking']})")


@app.command("app")
def app_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on; any other than 127.0.0.1 needs "
                                      "--token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port to listen on.", min=1, max=65535)] = 8765,
    token: Annotated[Optional[str], typer.Option("--token", help="Secret every request must carry (required "
                                                 "off 127.0.0.1).")] = None,
    config: TaskFile = None,
    set_: Sets = None,
    name: RunName = None,
) -> None:
    """The discovery app: a local web page to browse a run's ranked objects, label them (interest 0-5,
    tags, keyboard shortcuts) and re-rank from the labels; labels go to runs/<name>/app/labels.sqlite."""
    from fmb.app.server import serve

    serve(_config(config, set_, name), host=host, port=port, token=token)


def main() -> None:
    """Entry point: every failure prints as one line. A user-facing error (`FmbError`) exits 2; anything
    else is unexpected, exits 1 and says where its full traceback was written. ``--debug`` anywhere on
    the command line, or ``FMB_DEBUG=1``, prints the traceback as well."""
    debug = _take_flag(sys.argv, "--debug") or os.environ.get("FMB_DEBUG", "0") not in ("", "0")
    try:
        app()
    except FmbError as exc:
        _fail(str(exc), 2, debug)
    except Exception as exc:  # a bug, or an input fmb does not check yet
        log = _write_crash_log()
        summary = (str(exc).splitlines() or [""])[0][:300]
        _fail(f"unexpected {type(exc).__name__}: {summary} (the full traceback is in {log}; please report it "
              "with that file)", 1, debug)


def _take_flag(argv: list[str], flag: str) -> bool:
    """Remove `flag` from `argv` (before any `--`) and say whether it was there."""
    end = argv.index("--") if "--" in argv else len(argv)
    found = flag in argv[1:end]
    argv[:end] = [argv[0], *(arg for arg in argv[1:end] if arg != flag)]
    return found


def _fail(message: str, code: int, debug: bool) -> None:
    if debug:
        traceback.print_exc()
    Console(stderr=True).print(Text.assemble(("error: ", "bold red"), message), highlight=False, soft_wrap=True)
    sys.exit(code)


def _write_crash_log() -> Path:
    text = f"fmb {__version__}\ncommand: {' '.join(sys.argv)}\n\n{traceback.format_exc()}"
    name = f"fmb-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
    for directory in (crash_logs(find_root(Path.cwd())), Path(tempfile.gettempdir())):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            (directory / name).write_text(text)
            return directory / name
        except OSError:
            continue
    return Path("(nowhere: no writable directory)")

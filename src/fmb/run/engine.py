"""The stage engine: every stage, whether started by `fmb run` or by its own command, runs here, so
state, timings, caching and resume behave the same whichever way a user starts it.

A stage's *key* is a hash of its parts: the stage's version and fmb's version, the values of the
config sections it declares (without their `runtime_only` settings), a content fingerprint of each
input (a Parquet file by its footer, a manifest or small file by its bytes, a large file by its
size, mtime and its first and last MiB) and, where it has one, the identity of a non-file input
(the revision a hub dataset resolved to). The parts of each stage's last run are kept in
``runs/<name>/run/state.json``:

* same key as the last finished run and outputs present  -> skipped;
* same key as a run that was interrupted                  -> run again on top of its outputs, so the
                                                             stages that resume (embed, adapt) resume;
* a different key, or forced by ``--from``/``--only``     -> it runs afresh;
* same key, finished, but an output fails its check       -> it runs again on a copy of its outputs
  (`Stage.damaged`, e.g. an embedding part whose checksum     less the damaged files, redoing just those.
  differs from its manifest)

A stage never writes over its outputs: it writes staging copies and they replace the outputs only
once it has finished (`fmb.run.staging`), so a failure, a refusal or a kill leaves the previous
outputs byte for byte; its arguments and inputs are checked first (`Stage.check`). An output fmb
did not make (outside the run, without the owner marker, not an empty directory) is refused. A
fresh start (not a resume) also starts the stage's shard records over.

Keys are computed just before each stage runs, after its upstream stages, so changing one input
reruns exactly the stages downstream of it. `plan_report` says, without running anything, what
would run and why (which config key or input changed, or which upstream stage reruns).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from fmb import __version__
from fmb.config import ResolvedConfig, result_values, run_settings
from fmb.errors import ConfigError, FmbError
from fmb.io import parquet_footer_sha256, read_json_object, remove_stale_temporaries, write_json
from fmb.layout import OWNER_MARKER, made_by_fmb
from fmb.run.sharded import run_sharded, uses_shards
from fmb.run.staging import Staging
from fmb.stage import Stage, always_applies

_WHOLE_FILE_BYTES = 64 << 20  # files up to this size are hashed whole
_EDGE_BYTES = 1 << 20


@dataclass
class Outcome:
    stage: str
    status: str  # ran | skipped | not applicable
    seconds: float = 0.0
    note: str = ""
    result: object = None  # what the stage's action returned (None when it did not run)


@dataclass
class Plan:
    stages: list[Stage]
    forced: set[str] = field(default_factory=set)
    selected: set[str] = field(default_factory=set)


def select(stages: list[Stage], start: str | None = None, only: str | None = None, force: bool = True) -> Plan:
    """The stages to consider: all of them; `start` and everything downstream (forced); or `only`
    (forced unless `force` is False: a stage's own command skips it when nothing changed)."""
    if start and only:
        raise ConfigError("give --from or --only, not both")
    names = [stage.name for stage in stages]
    if not (start or only):
        return Plan(stages, set(), set(names))
    wanted = _matching(stages, start or only)
    if only:
        return Plan(stages, wanted if force else set(), wanted)
    downstream = _downstream(stages, wanted)
    return Plan(stages, downstream, downstream)


def _matching(stages: list[Stage], name: str) -> set[str]:
    found = {stage.name for stage in stages if name in (stage.name, stage.family)}
    if not found:
        choices = ", ".join(dict.fromkeys([s.family for s in stages] + [s.name for s in stages if ":" in s.name]))
        raise ConfigError(f"no stage called {name!r}; stages: {choices}")
    return found


def _downstream(stages: list[Stage], roots: set[str]) -> set[str]:
    reached = set(roots)
    for stage in stages:  # stages are listed upstream first
        if upstream_in(stage, reached):
            reached.add(stage.name)
    return reached


def upstream_in(stage: Stage, names: set[str]) -> list[str]:
    """The stages among `names` that `stage` comes after (`after` lists stage names or families)."""
    return sorted(name for name in names if name in stage.after or name.partition(":")[0] in stage.after)


# -- keys ---------------------------------------------------------------------------------------------
def key_parts(config: ResolvedConfig, stage: Stage) -> dict[str, object]:
    """Everything a stage's outputs depend on, by part name ("config:detect", "input:<path>", ...)."""
    parts: dict[str, object] = {"version": f"{stage.name}/{stage.version}, fmb {__version__}"}
    included = [key for key in stage.config_keys if not key.startswith("-")]
    parts.update({f"config:{key}": result_values(config.section(key)) for key in included})
    for excluded in (key[1:] for key in stage.config_keys if key.startswith("-")):  # "-models.aion.embed"
        owner = next(key for key in included if excluded.startswith(key + "."))
        node = parts[f"config:{owner}"]
        *path, leaf = excluded[len(owner) + 1:].split(".")
        for name in path:
            node = node[name]
        node.pop(leaf, None)
    parts.update({f"input:{_relative(config, path)}": fingerprint(path) for path in stage.inputs(config)})
    if stage.fingerprint is not None:
        parts["source"] = stage.fingerprint(config)
    return parts


def stage_key(config: ResolvedConfig, stage: Stage) -> str:
    return _digest(key_parts(config, stage))


def _digest(parts: dict) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def _relative(config: ResolvedConfig, path: Path) -> str:
    try:
        return str(path.relative_to(config.root))
    except ValueError:
        return str(path)


def fingerprint(path: Path) -> str | None:
    """A content fingerprint of a file or of every file under a directory; None when absent."""
    if path.is_file():
        return _file_fingerprint(path)
    if not path.is_dir():
        return None
    files = [f for f in sorted(path.rglob("*")) if f.is_file() and not f.name.startswith(".tmp-")]
    return _digest({str(f.relative_to(path)): _file_fingerprint(f) for f in files})


def _file_fingerprint(path: Path) -> str:
    size = path.stat().st_size
    if path.suffix == ".parquet":  # the footer holds the schema, row groups and statistics
        return parquet_footer_sha256(path)
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        if size <= _WHOLE_FILE_BYTES:
            digest.update(handle.read())
        else:
            digest.update(handle.read(_EDGE_BYTES))
            handle.seek(size - _EDGE_BYTES)
            digest.update(handle.read())
            digest.update(str(path.stat().st_mtime_ns).encode())
    digest.update(str(size).encode())
    return digest.hexdigest()


# -- state --------------------------------------------------------------------------------------------
class State:
    """The key, parts and status of each stage's last run, saved after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict = _read_state(path) if path.is_file() else {}

    def record(self, stage: str, **entry) -> None:
        self.entries[stage] = entry
        write_json(self.entries, self.path)

    def attempt(self, stage: str, **attempt) -> None:
        """A run of the stage that has not replaced its outputs (running, or failed). The entry of
        the run that made the outputs in place stays as it is, beside it (`attempt`)."""
        previous = self.entries.get(stage, {})
        if previous.get("status") == "done":
            self.record(stage, **{k: v for k, v in previous.items() if k != "attempt"}, attempt=attempt)
        else:
            self.record(stage, **attempt)


def _read_state(path: Path) -> dict:
    # a guess at what ran could redo finished work (a stage whose key looks changed is redone
    # from scratch), so an unreadable state is the user's call
    entries = read_json_object(path, "delete it to rerun every stage from the start")
    for stage, entry in entries.items():
        if not isinstance(entry, dict):
            raise FmbError(f"{path} is not a record fmb wrote (stage {stage!r} holds {json.dumps(entry)[:40]}, not its "
                           "record); delete it to rerun every stage from the start")
    return entries


# -- running ------------------------------------------------------------------------------------------
def execute(config: ResolvedConfig, plan: Plan, log: Callable[[str], None] = print) -> list[Outcome]:
    """Run the plan: in order in this process, or (`run.parallel` > 1, local executor) up to that
    many stages at once, each started once its upstream stages are done (`fmb.run.parallel`).
    A failing stage raises; its outputs stay, so the next run resumes it."""
    state = State(config.layout.state)
    stages = [stage for stage in plan.stages if stage.name in plan.selected]
    if config.run.parallel > 1 and config.executor.kind == "local" and len(stages) > 1:
        from fmb.run.parallel import execute_parallel

        return execute_parallel(config, stages, plan.forced, state, log)
    outcomes = []
    for stage in stages:
        outcome = start_stage(config, stage, stage.name in plan.forced, state, log)
        if isinstance(outcome, Started):
            outcome = finish_stage(outcome, state, log, partial(act, outcome.staging.config, stage, outcome.key,
                                                                 _indented(log)))
        outcomes.append(outcome)
    return outcomes


def _indented(log):
    return lambda line: log(f"  {line}")


@dataclass
class Started:
    """A stage whose outputs are staged and whose run is recorded as running: what is left is its
    action (`act`, here or in a worker process) and `finish_stage`."""

    stage: Stage
    key: str
    parts: dict
    attempt: dict
    staging: Staging
    previous: dict
    clock: float


def start_stage(config: ResolvedConfig, stage: Stage, forced: bool, state: State, log) -> "Started | Outcome":
    """Everything before a stage's action: skipped or not applicable (an `Outcome`), else its outputs
    staged, its run recorded as running (`Started`)."""
    reason = stage.applies(config)
    if reason:
        log(f"[{stage.name}] not applicable: {reason}")
        return Outcome(stage.name, "not applicable", note=reason)
    parts = key_parts(config, stage)
    key = _digest(parts)
    previous = state.entries.get(stage.name, {})
    outputs = stage.outputs(config)
    current = _is_current(previous, key, outputs)
    damaged = damaged_outputs(config, stage) if current else []
    if not forced and current and not damaged:
        log(f"[{stage.name}] unchanged, skipped")
        return Outcome(stage.name, "skipped", note="inputs and config unchanged")
    refuse_foreign(outputs, config.layout.root)
    refuse_damaged_inputs(config, stage)
    if stage.check is not None:  # arguments, inputs and files to import, before anything is written
        stage.check(config)
    staging = Staging(config, stage.name, outputs)
    repair = [path for path, _ in damaged] if damaged and not forced else None
    if repair is not None:
        log(f"[{stage.name}] redoing what failed its check: " + "; ".join(f"{p.name} ({why})" for p, why in damaged))
    resumed = staging.start(key, resume=not forced, seed=repair)
    if not resumed and repair is None:
        shutil.rmtree(config.layout.shards(stage.name).dir, ignore_errors=True)  # a fresh start redoes every shard
    stale = remove_stale_temporaries(list(staging.staged.values()))
    if stale:
        log(f"[{stage.name}] removed {len(stale)} temporary files a killed run left (e.g. {stale[0].name})")
    attempt = {"key": key, "parts": parts, "started": time.time()}
    state.attempt(stage.name, status="running", **attempt)
    write_json(run_settings(config), config.layout.settings)  # the next command on this run starts from it
    log(f"[{stage.name}] running" + (" (resuming its unfinished outputs)" if resumed else ""))
    return Started(stage, key, parts, attempt, staging, previous, time.perf_counter())


def finish_stage(started: Started, state: State, log, action: Callable[[], object]) -> Outcome:
    """The stage's action (`action()`: runs it here, or waits for the worker that runs it and
    returns its result or raises its error), then its staged outputs committed and its run
    recorded as done; a failure is recorded the same way wherever the action ran."""
    stage = started.stage
    try:
        result = action()
        started.staging.commit()
    except BaseException as error:  # the staging copies stay for a resume; the outputs are untouched
        stopped = isinstance(error, KeyboardInterrupt)  # Ctrl+C: said as such by `fmb status`
        state.attempt(stage.name, status="interrupted" if stopped else "failed",
                      error="interrupted (Ctrl+C)" if stopped else _one_line(error), **started.attempt)
        if isinstance(error, Exception):
            log(f"[{stage.name}] failed: {_one_line(error)}" + ("; its previous outputs are kept" if started.previous
                                                                else ""))
        raise
    seconds = time.perf_counter() - started.clock
    state.record(stage.name, key=started.key, parts=started.parts, status="done", seconds=round(seconds, 2),
                 finished=time.time())
    return Outcome(stage.name, "ran", seconds, _describe(result), result)


def _one_line(error: BaseException) -> str:
    return (str(error).splitlines() or [type(error).__name__])[0] or type(error).__name__


def act(config: ResolvedConfig, stage: Stage, key: str, log):
    if uses_shards(config, stage):
        return run_sharded(config, stage, key, log)
    return stage.action(config, log)


def _is_current(previous: dict, key: str, outputs: list[Path]) -> bool:
    return previous.get("key") == key and previous.get("status") == "done" and all(p.exists() for p in outputs)


def damaged_outputs(config: ResolvedConfig, stage: Stage) -> list[tuple[Path, str]]:
    """(file, why) of each finished output that fails its check (`Stage.damaged`); for a stage
    without its own, each Parquet output (or Parquet file at the top of an output directory) whose
    footer cannot be read (truncated, overwritten): what a rerun redoes, exactly, without --force."""
    if stage.damaged is not None:  # a stage that checks its own outputs (embed: every part by its manifest)
        return list(stage.damaged(config))
    return _unreadable_parquet(stage.outputs(config))


def _unreadable_parquet(outputs: list[Path]) -> list[tuple[Path, str]]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    files = [path for output in outputs
             for path in (sorted(output.glob("*.parquet")) if output.is_dir() else [output])
             if path.suffix == ".parquet" and path.is_file()]
    unreadable = []
    for path in files:
        try:
            pq.read_metadata(path)
        except (OSError, pa.ArrowException) as error:
            unreadable.append((path, f"not readable Parquet ({_one_line(error)[:100]})"))
    return unreadable


def refuse_damaged_inputs(config: ResolvedConfig, stage: Stage) -> None:
    """A Parquet input whose footer cannot be read (truncated, not Parquet) is named before the stage
    starts, with what to do, instead of failing deep inside it."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    for path in stage.inputs(config):
        if path.suffix == ".parquet" and path.is_file():
            try:
                pq.read_metadata(path)
            except (OSError, pa.ArrowException) as error:
                raise FmbError(f"{_relative(config, path)}, an input of {stage.name}, is damaged or not Parquet "
                               f"({_one_line(error)[:100]}); redo the stage that writes it with --force, then "
                               "this one") from None


def refuse_foreign(paths: list[Path], run_root: Path) -> None:
    """Refuse to replace an output fmb did not make (`made_by_fmb`); an empty directory holds
    nothing to lose, and is claimed."""
    foreign = [path for path in paths if path.exists() and not made_by_fmb(path, run_root)
               and not (path.is_dir() and not any(path.iterdir()))]
    if foreign:
        raise FmbError(f"{foreign[0]} was not made by fmb (it is outside {run_root} and has no "
                       f"{OWNER_MARKER} file), so fmb will not delete it to rerun this stage; move it away "
                       "or point the setting that names it at a new or empty directory")


def _describe(result) -> str:
    """A few short numbers from a stage's summary for the closing table (paths are in the report)."""
    if not isinstance(result, dict):
        return ""
    numbers = [f"{key}: {value}" for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return ", ".join(numbers[:3])


# -- dry run ------------------------------------------------------------------------------------------
@dataclass
class Forecast:
    stage: str
    runs: bool
    reason: str


def plan_report(config: ResolvedConfig, plan: Plan) -> list[Forecast]:
    """For every stage of the plan: would it run or be skipped, and why. Nothing is run or written.

    A stage downstream of one that would run is reported as running because of it (its inputs
    will change), without comparing inputs that do not exist yet.
    """
    state = State(config.layout.state)
    rerunning: set[str] = set()
    forecasts = []
    for stage in plan.stages:
        if stage.name not in plan.selected:
            forecasts.append(Forecast(stage.name, False, "not selected"))
            continue
        forecast = _forecast(config, stage, stage.name in plan.forced, state.entries.get(stage.name, {}), rerunning)
        if forecast.runs:
            rerunning.add(stage.name)
        forecasts.append(forecast)
    return forecasts


def _forecast(config, stage: Stage, forced: bool, previous: dict, rerunning: set[str]) -> Forecast:
    upstream = upstream_in(stage, rerunning)
    try:
        reason = stage.applies(config)
    except FmbError as error:  # what it needs is made upstream: decided when the stage's turn comes
        reason = None if upstream else f"cannot tell yet ({error})"
    if reason:
        return Forecast(stage.name, False, f"not applicable: {reason}")
    if forced:
        return Forecast(stage.name, True, "forced (--from / --only)")
    if upstream:
        return Forecast(stage.name, True, f"upstream {', '.join(upstream)} reruns (applies if what it needs is made)"
                        if stage.applies is not always_applies else f"upstream {', '.join(upstream)} reruns")
    if not previous:
        return Forecast(stage.name, True, "never ran")
    parts = key_parts(config, stage)
    if previous.get("key") != _digest(parts):
        return Forecast(stage.name, True, "; ".join(changed_parts(previous.get("parts", {}), parts)))
    if previous.get("status") != "done":
        return Forecast(stage.name, True, f"resumes (last run {previous.get('status')})")
    missing = [str(p) for p in stage.outputs(config) if not p.exists()]
    if missing:
        return Forecast(stage.name, True, f"outputs missing: {', '.join(missing)}")
    damaged = damaged_outputs(config, stage)
    if damaged:
        return Forecast(stage.name, True, "redoes what fails its check: " + "; ".join(f"{p} ({why})" for p, why in damaged))
    return Forecast(stage.name, False, "unchanged, skipped")


def changed_parts(before: dict, now: dict) -> list[str]:
    """What differs between two key part sets, in words: changed config keys (dotted), inputs, versions."""
    if not before:
        return ["made by a version of fmb that did not record why"]
    notes = []
    for name in sorted(set(before) | set(now)):
        old, new = before.get(name), now.get(name)
        if old == new:
            continue
        kind, _, what = name.partition(":")
        if kind == "config":
            notes += [f"config {key} {a!r} -> {b!r}" for key, a, b in _leaf_changes(what, old, new)]
        elif kind == "input":
            notes.append(f"input {what} {'appeared' if old is None else 'is gone' if new is None else 'changed'}")
        elif kind == "version":
            notes.append(f"code changed ({old} -> {new})")
        else:
            notes.append(f"{name} changed")
    return notes or ["key changed"]


def _leaf_changes(prefix: str, old, new) -> list[tuple[str, object, object]]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [change for key in sorted(set(old) | set(new))
                for change in _leaf_changes(f"{prefix}.{key}", old.get(key), new.get(key)) if old.get(key) != new.get(key)]
    return [(prefix, old, new)]

"""`fmb run`: every stage in order from one config, each skipped when nothing it depends on changed.

A stage's *key* is a hash of the config sections it reads and of the state of the files it reads
(path, size and modification time of each file, so a rewritten upstream output counts as changed).
The key of each finished stage is kept in ``runs/<name>/run/state.json``:

* same key as the last finished run and outputs present  -> skipped;
* same key as a run that was interrupted                  -> run again on top of its outputs, so the
                                                             stages that resume (embed, adapt) resume;
* a different key, or forced by ``--from``/``--only``     -> its outputs are removed, then it runs.

Keys are computed just before each stage runs, after its upstream stages, so changing one input
reruns exactly the stages downstream of it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from fmb.config import ResolvedConfig
from fmb.errors import ConfigError
from fmb.io import write_json

STATE_FILE = Path("run") / "state.json"


@dataclass(frozen=True)
class Stage:
    name: str  # "embed:aion"; the part before ":" is its family ("embed")
    action: Callable[[ResolvedConfig, Callable[[str], None]], object]  # (config, log) -> summary
    config_keys: tuple[str, ...]  # dotted config sections whose values enter the key
    inputs: Callable[[ResolvedConfig], list[Path]]  # files or directories it reads
    outputs: Callable[[ResolvedConfig], list[Path]]  # what it writes (removed before a changed rerun)
    after: tuple[str, ...] = ()  # upstream stages
    applies: Callable[[ResolvedConfig], str | None] = lambda _config: None  # a reason to pass it by, or None

    @property
    def family(self) -> str:
        return self.name.partition(":")[0]


@dataclass
class Outcome:
    stage: str
    status: str  # ran | skipped | not applicable
    seconds: float = 0.0
    note: str = ""


@dataclass
class Plan:
    stages: list[Stage]
    forced: set[str] = field(default_factory=set)
    selected: set[str] = field(default_factory=set)


def select(stages: list[Stage], start: str | None = None, only: str | None = None) -> Plan:
    """The stages to consider: all of them; `start` and everything downstream (forced); or `only`."""
    if start and only:
        raise ConfigError("give --from or --only, not both")
    names = [stage.name for stage in stages]
    if not (start or only):
        return Plan(stages, set(), set(names))
    wanted = _matching(stages, start or only)
    if only:
        return Plan(stages, wanted, wanted)
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
        if reached.intersection(stage.after):
            reached.add(stage.name)
    return reached


def stage_key(config: ResolvedConfig, stage: Stage) -> str:
    values = config.values.model_dump(mode="json")
    sections = {key: _lookup(values, key) for key in stage.config_keys}
    files = {str(path): _fingerprint(path) for path in stage.inputs(config)}
    payload = json.dumps({"stage": stage.name, "config": sections, "inputs": files}, sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


def _lookup(values: dict, dotted: str):
    for part in dotted.split("."):
        values = values[part]
    return values


def _fingerprint(path: Path) -> list | None:
    """(relative path, size, mtime) of every file at or under `path`; None when it does not exist."""
    if path.is_file():
        return [[path.name, path.stat().st_size, path.stat().st_mtime_ns]]
    if not path.is_dir():
        return None
    return [[str(f.relative_to(path)), f.stat().st_size, f.stat().st_mtime_ns]
            for f in sorted(path.rglob("*")) if f.is_file() and not f.name.startswith(".tmp-")]


class State:
    """The key and status of each stage's last run, saved after every change."""

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict = json.loads(path.read_text()) if path.is_file() else {}

    def record(self, stage: str, **entry) -> None:
        self.entries[stage] = entry
        write_json(self.entries, self.path)


def execute(config: ResolvedConfig, plan: Plan, log: Callable[[str], None] = print) -> list[Outcome]:
    """Run the plan in order. A failing stage raises; its outputs stay, so the next run resumes it."""
    state = State(config.run_dir / STATE_FILE)
    return [_run_stage(config, stage, stage.name in plan.forced, state, log)
            for stage in plan.stages if stage.name in plan.selected]


def _run_stage(config: ResolvedConfig, stage: Stage, forced: bool, state: State, log) -> Outcome:
    reason = stage.applies(config)
    if reason:
        log(f"[{stage.name}] not applicable: {reason}")
        return Outcome(stage.name, "not applicable", note=reason)
    key = stage_key(config, stage)
    previous = state.entries.get(stage.name, {})
    outputs = stage.outputs(config)
    if not forced and previous.get("key") == key and previous.get("status") == "done" and all(p.exists() for p in outputs):
        log(f"[{stage.name}] unchanged, skipped")
        return Outcome(stage.name, "skipped", note="inputs and config unchanged")
    if forced or previous.get("key") != key:
        _remove(outputs)
    state.record(stage.name, key=key, status="running", started=time.time())
    log(f"[{stage.name}] running")
    started = time.perf_counter()
    try:
        result = stage.action(config, lambda line: log(f"  {line}"))
    except Exception as error:
        state.record(stage.name, key=key, status="failed", error=str(error))
        log(f"[{stage.name}] failed: {error}")
        raise
    seconds = time.perf_counter() - started
    state.record(stage.name, key=key, status="done", seconds=round(seconds, 2), finished=time.time())
    return Outcome(stage.name, "ran", seconds, _describe(result))


def _remove(paths: list[Path]) -> None:
    for path in paths:
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def _describe(result) -> str:
    """A few short numbers from a stage's summary for the closing table (paths are in the report)."""
    if not isinstance(result, dict):
        return ""
    numbers = [f"{key}: {value}" for key, value in result.items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)]
    return ", ".join(numbers[:3])

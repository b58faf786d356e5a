"""How a stage declares itself. Each stage module exports its stage(s) beside its code; `fmb.run`
only orders them and runs them through one engine (`fmb.run.engine`).

A stage says:

* ``name``: "detect"; a per-model stage is a `ModelStage` family ("embed") expanded to one stage per
  model of ``run.models`` ("embed:aion");
* ``action(config, log)``: does the work and returns a small summary;
* ``config_keys``: the dotted config sections whose values change its *outputs* (settings marked
  `runtime_only` in the config, such as batch sizes, worker counts and devices, are left out;
  "-models.aion.embed" leaves a subsection of an included one out);
* ``inputs`` / ``outputs``: the files or directories it reads and writes (it writes staging copies
  of its outputs, which replace them once it has finished; nothing else is ever removed);
* ``check``: a refusal of its arguments or inputs (raises), run before anything is written;
* ``damaged``: the finished outputs that fail their check, with why (a part whose checksum differs
  from its manifest): the engine reruns the stage on its outputs less those, redoing just them;
* ``after``: the stages upstream of it; ``version``: bumped when the code changes what it writes,
  so outputs of older code are never taken for current ones;
* ``fingerprint``: an extra identity of what it reads that is not a local file (a hub revision);
* ``applies``: a reason to pass it by (no truth table, no catalog), or None;
* ``sharding``: how it splits into shards that an executor can run anywhere (`Sharding`), or None
  for a stage that runs in one process.

This module is at the bottom of the import layers: it imports nothing of fmb.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial
from pathlib import Path


def always_applies(_config) -> str | None:
    return None


def _nothing(_config) -> list[Path]:
    return []


@dataclass(frozen=True)
class Sharding:
    """A stage as shards: ``units(config)`` its work units (ids in plan order), ``run(config, shard)``
    one shard's work (skipping units already done, so a requeued shard resumes), ``finish(config,
    log)`` what runs once every shard is done (merging their outputs), returning the stage's summary;
    ``prepare(config)``, when given, runs once before any shard, as one job (fitting what every
    shard applies), and skips what it already did."""

    units: Callable
    run: Callable
    finish: Callable
    prepare: Callable | None = None


@dataclass(frozen=True)
class Stage:
    name: str
    action: Callable  # (config, log) -> summary
    config_keys: tuple[str, ...]
    inputs: Callable = _nothing  # config -> [Path]
    outputs: Callable = _nothing  # config -> [Path]
    after: tuple[str, ...] = ()
    applies: Callable = always_applies  # config -> reason to pass it by, or None
    version: int = 1
    fingerprint: Callable | None = None  # config -> JSON-able identity of a non-file input
    sharding: Sharding | None = None
    check: Callable | None = None  # config -> None, raises on a bad argument or input
    damaged: Callable | None = None  # config -> [(path, why)]

    @property
    def family(self) -> str:
        return self.name.partition(":")[0]


@dataclass(frozen=True)
class ModelStage:
    """A stage run once per model: `action(config, log, model)`; `inputs(config, model)`, ... ;
    "{model}" in `config_keys` and `after` is replaced by the model's name."""

    family: str
    action: Callable
    config_keys: tuple[str, ...]
    inputs: Callable
    outputs: Callable
    after: tuple[str, ...] = ()
    version: int = 1
    sharding: Sharding | None = None  # units(config, model), run(config, shard), finish(config, log, model)
    check: Callable | None = None  # (config, model)
    damaged: Callable | None = None  # (config, model) -> [(path, why)]

    def expand(self, models: list[str]) -> list[Stage]:
        return [self.for_model(model) for model in models]

    def for_model(self, model: str) -> Stage:
        return Stage(f"{self.family}:{model}", partial(_call_action, self.action, model),
                     tuple(key.format(model=model) for key in self.config_keys),
                     partial(_call_with_model, self.inputs, model), partial(_call_with_model, self.outputs, model),
                     tuple(name.format(model=model) for name in self.after), version=self.version,
                     sharding=self._sharding_for(model), check=self.check and partial(_call_with_model, self.check, model),
                     damaged=self.damaged and partial(_call_with_model, self.damaged, model))

    def _sharding_for(self, model: str) -> Sharding | None:
        if self.sharding is None:
            return None
        prepare = self.sharding.prepare
        return Sharding(partial(_call_with_model, self.sharding.units, model), self.sharding.run,
                        partial(_call_action, self.sharding.finish, model),
                        prepare and partial(_call_with_model, prepare, model))


def _call_action(action: Callable, model: str, config, log):
    return action(config, log, model)


def _call_with_model(function: Callable, model: str, config):
    return function(config, model)


def with_action(stage: Stage, action: Callable, check: Callable | None = None) -> Stage:
    """The same stage (same key, inputs and outputs) done another way, e.g. embeddings imported from a
    file: in one process, so without the stage's shards; `check`, when given, replaces its own."""
    return replace(stage, action=action, sharding=None, **({"check": check, "damaged": None} if check else {}))

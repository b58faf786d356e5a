"""The stage engine (keys, state, caching, dry run) and the ordered stage list of `fmb run`."""

from __future__ import annotations

from dataclasses import replace

from fmb.config import ResolvedConfig
from fmb.run.engine import Outcome, execute, select
from fmb.stage import Stage, always_applies


def run_one(config: ResolvedConfig, stage: Stage, log, force: bool = False) -> Outcome:
    """A single stage through the same engine as `fmb run`: skipped when unchanged (unless `force`),
    its key, timing and status recorded, so a later `fmb run` skips it too. Asked for by name, it
    runs even where `fmb run` would pass it by (`fmb data synth` without run.synth): its own checks
    then say what is missing."""
    stage = replace(stage, applies=always_applies)
    return execute(config, select([stage], only=stage.name, force=force), log=log)[0]

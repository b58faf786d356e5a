"""A stage run as shards through an executor (`executor.*` settings): plan the shards, run those
not done, then finish (merge). Used by the engine for stages that declare a `Sharding`, whenever
the executor is not a single local process.

`runs/<name>/shards/<stage>/plan.json` records the plan (its key and shard count), and each shard
its status record (running, done, failed with the error and the task's log): what `fmb status`
reads.
"""

from __future__ import annotations

import hashlib
import time

from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.io import write_json
from fmb.run.executors import ShardJob, executor_for, plan_shards, record_outcome, shard_status
from fmb.stage import Stage


def uses_shards(config: ResolvedConfig, stage: Stage) -> bool:
    settings = config.executor
    return stage.sharding is not None and (settings.kind == "slurm" or settings.workers > 1
                                           or settings.shards is not None)


def run_sharded(config: ResolvedConfig, stage: Stage, key: str, log) -> dict:
    """Run `stage`'s shards not yet done under this plan; the stage's summary once all are done.
    Failed shards are collected, then reported together (rerunning retries only them)."""
    files = config.layout.shards(stage.name)
    executor = executor_for(config.executor, files.job_logs, log)
    if stage.sharding.prepare is not None:  # one job (a fit on a sample) that every shard then reads
        log(f"preparing {stage.name} on {config.executor.kind} (one job)")
        executor.call(stage.sharding.prepare, config)
    units = list(stage.sharding.units(config))
    count = _shard_count(config, len(units))
    shards = plan_shards(stage.name, units, count, hashlib.sha256(f"{key}:{count}".encode()).hexdigest()[:16])
    write_json({"stage": stage.name, "plan_key": shards[0].plan_key if shards else "", "shards": len(shards),
                "units": len(units), "executor": config.executor.kind, "submitted": time.time()}, files.plan)
    todo = [shard for shard in shards if (shard_status(files, shard) or {}).get("status") != "done"]
    log(f"{len(shards)} shards ({len(shards) - len(todo)} done before), {len(todo)} to run on {config.executor.kind}")
    outcomes = executor.run(ShardJob(stage.sharding.run, config, files), todo)
    failed = [outcome for outcome in outcomes if outcome.status != "done"]
    for outcome in failed:  # a task killed from outside never wrote its own record
        if (shard_status(files, outcome.shard) or {}).get("status") != "failed":
            record_outcome(files, outcome)
    if failed:
        first = failed[0]
        raise FmbError(f"{len(failed)} of {len(shards)} shards of {stage.name} failed (shard {first.shard.index}: "
                       f"{first.error}; log {first.log or files.status(first.shard.index)}); `fmb status` lists "
                       "them, and rerunning the same command runs only those")
    summary = stage.sharding.finish(config, log)
    if isinstance(summary, dict) and isinstance(summary.get("units_done_now"), int):  # the shards did them
        summary["units_done_now"] += sum(int((o.result or {}).get("units_done_now") or 0) for o in outcomes)
    return summary


def _shard_count(config: ResolvedConfig, n_units: int) -> int:
    settings = config.executor
    if settings.shards is not None:
        return settings.shards
    return settings.workers if settings.kind == "local" else n_units

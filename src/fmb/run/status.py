"""`fmb status`: where each stage of a run stands, and for stages run as shards, how many shards
are done, running, failed (with the task's log) or not started, from the records the executors
write (`runs/<name>/shards/<stage>/`). Reads only; never changes a record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from fmb.config import ResolvedConfig
from fmb.io import read_json_object
from fmb.run.executors import queued_tasks


@dataclass
class ShardCounts:
    stage: str
    shards: int
    executor: str
    done: int = 0
    running: int = 0
    failed: list[tuple[int, str, str]] = field(default_factory=list)  # (shard, error, log)

    @property
    def not_started(self) -> int:
        return self.shards - self.done - self.running - len(self.failed)


def stage_states(config: ResolvedConfig) -> dict[str, dict]:
    """The engine's record of each stage's last run (status, seconds, error)."""
    from fmb.run.engine import State

    return State(config.layout.state).entries


def shard_counts(config: ResolvedConfig) -> list[ShardCounts]:
    """One entry per stage that was run as shards, for its last plan. A shard recorded as running
    whose SLURM task is no longer queued was killed (cancelled, node lost) and counts as failed."""
    root = config.layout.shards_dir
    if not root.is_dir():
        return []
    queued = None
    counts = []
    for plan_path in sorted(root.glob("*/plan.json")):
        plan = read_json_object(plan_path, "rerun the stage to write it again")
        files = config.layout.shards(plan["stage"])
        entry = ShardCounts(plan["stage"], plan["shards"], plan.get("executor", "local"))
        for path in files.statuses():
            record = _record(path)
            if record.get("shard", {}).get("plan_key") != plan["plan_key"]:
                continue  # a record of an earlier plan
            status, index = record.get("status"), record["shard"]["index"]
            if status == "running" and record.get("job"):
                queued = queued_tasks() if queued is None else queued
                if queued is not None and record["job"] not in queued:
                    status = "failed"
                    record["error"] = f"task {record['job']} left the queue before finishing (cancelled or killed)"
            if status == "done":
                entry.done += 1
            elif status == "running":
                entry.running += 1
            else:
                entry.failed.append((index, record.get("error", ""), record.get("log", "") or str(path)))
        counts.append(entry)
    return counts


def _record(path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):  # being rewritten this instant, or cut short: not done
        return {"shard": {"plan_key": None}}

"""Where the shards of a stage run: this process, a pool of local processes, or SLURM job arrays.

Every executor takes the same thing: a `ShardJob` (a stage's shard function bound to the full
resolved config) and the `Shard`s still to do, and gives back one `ShardOutcome` per shard. A
shard that fails is an outcome with its error and log, never an exception that stops the others;
rerunning the same command plans the same shards and runs only those not done.

`slurm` goes through submitit: one array task per shard, arrays cut to the cluster's
`MaxArraySize`, at most `array_parallelism` running at once, the resources and setup lines of
`executor.slurm`, one log per task under `runs/<name>/shards/<stage>/jobs/`. A task that times out
or is preempted is requeued by submitit (`ShardJob` is checkpointable) and resumes its shard,
since every shard function skips the work units it already finished. Whether a task is over is
read from its result file, else from `squeue`: submitit asks `sacct`, which clusters without
accounting storage cannot answer, and a cancelled task would otherwise be waited on for ever.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import traceback
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

from fmb.config import ExecutorConfig, ResolvedConfig, SlurmSettings
from fmb.errors import FmbError
from fmb.io import read_json_object, write_json
from fmb.layout import ShardFiles
from fmb.stage import with_action


@dataclass(frozen=True)
class Shard:
    """One shard of a stage: fixed work units of the plan, and the key of the plan they belong to."""

    stage: str
    index: int
    units: tuple[int, ...]
    plan_key: str


@dataclass
class ShardOutcome:
    shard: Shard
    status: str  # done | failed
    error: str = ""
    log: str = ""
    result: dict | None = None


def plan_shards(stage: str, units: list[int], n_shards: int, plan_key: str) -> list[Shard]:
    """`units` cut into `n_shards` contiguous, near-equal shards (fewer when there are fewer units).
    Deterministic: the same units, count and key always give the same shards."""
    n_shards = max(1, min(n_shards, len(units)))
    size, extra = divmod(len(units), n_shards)
    shards, start = [], 0
    for index in range(n_shards):
        stop = start + size + (index < extra)
        shards.append(Shard(stage, index, tuple(units[start:stop]), plan_key))
        start = stop
    return shards


class ShardJob:
    """A stage's shard function with the config, callable in any process: what executors pickle.
    Writes the shard's status record (done, or failed with the error) whatever happens."""

    def __init__(self, run: Callable[[ResolvedConfig, Shard], dict], config: ResolvedConfig, files: ShardFiles):
        self.run, self.config, self.files = run, config, files

    def __call__(self, shard: Shard) -> ShardOutcome:
        write_json({"shard": asdict(shard), "status": "running", "host": socket.gethostname(), "pid": os.getpid(),
                    "job": _slurm_task_id(), "log": _task_log(), "started": time.time()}, self.files.status(shard.index))
        try:
            result = self.run(self.config, shard)
        except Exception as error:  # a failed shard is data for `fmb status`, not the end of the run
            traceback.print_exc()  # into the task's log, which the record names
            outcome = ShardOutcome(shard, "failed", error=_one_line(error), log=_task_log())
        else:
            outcome = ShardOutcome(shard, "done", result=_plain(result))
        record_outcome(self.files, outcome)
        return outcome

    def checkpoint(self, shard: Shard):
        """submitit calls this on timeout or preemption: requeue the same shard (it resumes)."""
        import submitit

        return submitit.helpers.DelayedSubmission(self, shard)


def record_outcome(files: ShardFiles, outcome: ShardOutcome) -> None:
    write_json(asdict(outcome) | {"finished": time.time()}, files.status(outcome.shard.index))


def shard_status(files: ShardFiles, shard: Shard) -> dict | None:
    """The shard's last status record, if it is of this plan."""
    path = files.status(shard.index)
    if not path.is_file():
        return None
    record = read_json_object(path, "delete it to run that shard again")
    return record if record.get("shard", {}).get("plan_key") == shard.plan_key else None


class Executor(ABC):
    @abstractmethod
    def run(self, job: ShardJob, shards: list[Shard]) -> list[ShardOutcome]:
        """Run every shard; one outcome each, in the order given."""

    @abstractmethod
    def call(self, function: Callable, *args):
        """`function(*args)` once, where the shards would run (a fit that every shard then uses);
        its result, or an FmbError naming the log when it failed."""


class LocalExecutor(Executor):
    """Shards in this process (one worker) or in a pool of `workers` processes. On a node with
    GPUs each worker process sees one of them (CUDA_VISIBLE_DEVICES), in turn: one worker per GPU."""

    def __init__(self, workers: int = 1, gpus: list[str] | None = None):
        """`gpus`: the devices to hand out (default: every GPU this process sees)."""
        self.workers, self.gpus = workers, gpus

    def run(self, job: ShardJob, shards: list[Shard]) -> list[ShardOutcome]:
        if self.workers == 1 or len(shards) <= 1:
            return [job(shard) for shard in shards]
        import multiprocessing

        # spawn: a forked child would inherit this process's torch threads and open files
        context = multiprocessing.get_context("spawn")
        devices = context.Queue()
        gpus = visible_gpus() if self.gpus is None else self.gpus
        for worker in range(self.workers):
            devices.put(gpus[worker % len(gpus)] if gpus else None)
        threads = threads_per_worker(self.workers)
        with ProcessPoolExecutor(self.workers, mp_context=context, initializer=_start_worker,
                                 initargs=(devices, threads)) as pool:
            return list(pool.map(job, shards))

    def call(self, function: Callable, *args):
        return function(*args)


class SlurmExecutor(Executor):
    """Job arrays through submitit. `cluster` is submitit's: None (auto: slurm when sbatch is there),
    "slurm", or "local"/"debug" to run the same submissions without a cluster (tests)."""

    #: the longest the submitting command stays silent while it waits
    PROGRESS_EVERY_S = 25.0

    def __init__(self, settings: SlurmSettings, folder: Path, cluster: str | None = "slurm", log=print):
        """`folder`: where submitit keeps each job's files and logs (`ShardFiles.job_logs`); `log`
        gets a progress line (tasks done / running or queued / failed) while the command waits."""
        self.settings, self.folder, self.cluster, self.log = settings, folder, cluster, log

    def executor(self, n_tasks: int):
        """A submitit executor with every setting of `executor.slurm`."""
        import submitit

        executor = submitit.AutoExecutor(folder=self.folder, cluster=self.cluster,
                                         slurm_max_num_timeout=self.settings.max_requeues)
        executor.update_parameters(**self.parameters(n_tasks))
        return executor

    def parameters(self, n_tasks: int) -> dict:
        s = self.settings
        parameters = dict(timeout_min=s.timeout_min, cpus_per_task=s.cpus_per_task, mem_gb=s.mem_gb,
                          tasks_per_node=1, nodes=1, name="fmb")
        if self.cluster not in ("slurm", None):
            return parameters
        slurm = dict(slurm_array_parallelism=min(s.array_parallelism, n_tasks), slurm_setup=list(s.setup),
                     slurm_additional_parameters=dict(s.additional))
        if s.gpus_per_task:
            slurm["slurm_gpus_per_task"] = s.gpus_per_task
        for key in ("partition", "account", "qos"):
            if getattr(s, key):
                slurm[f"slurm_{key}"] = getattr(s, key)
        return parameters | slurm

    def run(self, job: ShardJob, shards: list[Shard]) -> list[ShardOutcome]:
        limit = self.settings.max_array_size or max_array_size()
        jobs = []
        for start in range(0, len(shards), limit):  # submitit does not split arrays itself
            chunk = shards[start : start + limit]
            jobs += _submitted(lambda: self.executor(len(chunk)).map_array(job, chunk),
                               f"an array of {len(chunk)} tasks")
        self._wait(jobs)
        return [self._outcome(shard, submitted) for shard, submitted in zip(shards, jobs)]

    def call(self, function: Callable, *args):
        submitted = _submitted(lambda: self.executor(1).submit(function, *args), "the job")
        self._wait([submitted])
        if not self._finished(submitted):
            raise FmbError(f"the SLURM job {submitted.job_id} ended without a result (cancelled or killed); "
                           f"log {submitted.paths.stderr}")
        try:
            return submitted.result()
        except Exception as error:
            raise FmbError(f"the SLURM job {submitted.job_id} failed: {_one_line(error)}; log "
                           f"{submitted.paths.stderr}") from None

    def _wait(self, jobs: list) -> None:
        """Until every job has a result or has left the queue (twice in a row: a result file may lag)."""
        absent: dict[str, int] = {}
        started = said = time.monotonic()
        while True:
            waiting = [j for j in jobs if not self._finished(j) and absent.get(j.job_id, 0) < 2]
            if not waiting:
                return
            queued = queued_tasks() if self.cluster in ("slurm", None) else None
            for submitted in waiting:
                if queued is not None and submitted.job_id not in queued:
                    absent[submitted.job_id] = absent.get(submitted.job_id, 0) + 1
                elif queued is None and submitted.done():
                    absent[submitted.job_id] = 2
            if time.monotonic() - said >= self.PROGRESS_EVERY_S:
                said = time.monotonic()
                done = sum(1 for j in jobs if self._finished(j))
                gone = sum(1 for j in jobs if not self._finished(j) and absent.get(j.job_id, 0) >= 2)
                self.log(f"waiting for {len(jobs)} SLURM task(s): {done} done, {len(jobs) - done - gone} running "
                         f"or queued, {gone} failed ({said - started:.0f} s)")
            time.sleep(min(self.settings.poll_s, self.PROGRESS_EVERY_S))

    @staticmethod
    def _finished(submitted) -> bool:
        return submitted.paths.result_pickle.exists()

    def _outcome(self, shard: Shard, submitted) -> ShardOutcome:
        log = str(submitted.paths.stderr)
        if not self._finished(submitted):
            return ShardOutcome(shard, "failed", error=f"task {submitted.job_id} ended without a result "
                                "(cancelled, killed or out of requeues)", log=log)
        try:
            outcome = submitted.result()
        except Exception as error:  # the task crashed outside the shard function
            return ShardOutcome(shard, "failed", error=_one_line(error), log=log)
        outcome.log = log
        return outcome


def queued_tasks() -> set[str] | None:
    """Ids of every job and array task in the SLURM queue (pending, running, requeued), array tasks
    one by one as `<job>_<task>`; None when squeue cannot be asked."""
    try:
        listing = subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    return set(listing.stdout.split()) if listing.returncode == 0 else None


def visible_gpus() -> list[str]:
    """The GPUs this process may use, as CUDA_VISIBLE_DEVICES entries (none without CUDA)."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [gpu for gpu in listed.split(",") if gpu.strip()]
    try:
        import torch

        return [str(index) for index in range(torch.cuda.device_count())]
    except ImportError:
        return []


def threads_per_worker(workers: int) -> int:
    """Each of `workers` processes' share of the cores this process may run on: its CPU affinity (what a
    SLURM allocation, `taskset` or a container's cpuset grants), not every core of the machine
    (`os.cpu_count()`), which on a shared node would give each worker threads for cores it cannot use."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, cores // workers)


def _start_worker(devices, threads: int) -> None:
    """Pool initializer, before anything in the worker can start CUDA or a thread pool: its GPU,
    and its share of the cores (without it every worker's torch and BLAS take all the cores, and
    the workers oversubscribe them); a thread count the user set in the environment is kept."""
    gpu = devices.get()
    if gpu is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu
    use_threads(threads)


def use_threads(threads: int) -> None:
    """A worker process's share of the cores, set before its torch or BLAS start a thread pool."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ.setdefault(variable, str(threads))
    # a spawned worker first imports the parent's main module; if that loaded torch, torch has read
    # its thread count already and ignores the variables (2 workers x 2 threads on 2 cores ran 4x
    # slower than one process in benchmarks/shard_scaling.py, whose main module imports torch)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))


def max_array_size() -> int:
    """The cluster's MaxArraySize (`scontrol show config`); SLURM's default 1001 when unreadable.
    The largest index is MaxArraySize - 1, so that many tasks fit in one array."""
    try:
        text = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return 1001
    found = re.search(r"^MaxArraySize\s*=\s*(\d+)", text, re.MULTILINE)
    return int(found.group(1)) if found else 1001


def executor_for(settings: ExecutorConfig, folder: Path, log=print) -> Executor:
    if settings.kind == "slurm":
        return SlurmExecutor(settings.slurm, folder, log=log)
    return LocalExecutor(settings.workers)


def _task_log() -> str:
    """The log this SLURM task writes (its stderr), or "" outside SLURM."""
    if not os.environ.get("SLURM_JOB_ID"):
        return ""
    try:
        import submitit

        return str(submitit.JobEnvironment().paths.stderr)
    except Exception:  # not started by submitit: no log path to name
        return ""


def _slurm_task_id() -> str | None:
    job, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    return f"{job}_{task}" if job and task else os.environ.get("SLURM_JOB_ID")


def _submitted(submit: Callable, what: str):
    """`submit()`'s jobs; sbatch refusing them (no controller, a bad partition or account, ...) is
    one line naming sbatch's own first line, not a traceback."""
    from submitit.core.utils import FailedJobError

    try:
        return submit()
    except FailedJobError as error:
        refusal = next((line for line in str(error).splitlines() if line.strip()), "no reason given")
        raise FmbError(f"sbatch refused {what}: {refusal.strip()}; check executor.slurm (partition, account, qos, "
                       "resources) against `sinfo`") from None


def _one_line(error: BaseException) -> str:
    text = (str(error).splitlines() or [""])[0][:300]
    return text if isinstance(error, FmbError) else f"{type(error).__name__}: {text}"


def _plain(result) -> dict | None:
    """A stage summary as JSON values (paths as strings) for the status record."""
    if not isinstance(result, dict):
        return None
    return {key: value if isinstance(value, (int, float, str, bool, type(None))) else str(value)
            for key, value in result.items()}


# -- a stage that does not run as shards, as one job of the executor ------------------------------------
def on_executor(resolved: ResolvedConfig, stage):
    """`stage` as it runs under the configured executor: unchanged locally or when it runs as
    shards (their executor runs them); under SLURM, any other stage becomes one job submitted
    through the same executor (`Executor.call`), with the same key, inputs and outputs."""
    if resolved.executor.kind != "slurm" or stage.sharding is not None:
        return stage
    return with_action(stage, OneJob(stage.name, stage.action))


class OneJob:
    """A stage's action run as one job where the executor runs its jobs; what it prints goes to
    the job's log, its summary comes back here."""

    def __init__(self, name: str, action):
        self.name, self.action = name, action

    def __call__(self, config: ResolvedConfig, log_line):
        files = config.layout.shards(self.name)
        log_line(f"submitting {self.name} as one {config.executor.kind} job (logs under {files.dir})")
        return executor_for(config.executor, files.job_logs, log_line).call(self.action, config, print)

"""Executors: the shard plan, the local process pool, submitit's local cluster (real subprocesses,
no SLURM), and the sbatch text the SLURM executor would submit."""

import os
import pickle
from pathlib import Path

import numpy as np
import pytest

from fmb.config import SlurmSettings, load_config
from fmb.run.executors import LocalExecutor, Shard, ShardJob, SlurmExecutor, plan_shards, shard_status

ROOT = Path(__file__).resolve().parents[2]


def test_the_plan_is_contiguous_near_equal_and_deterministic():
    shards = plan_shards("embed:aion", list(range(10)), 4, "k")
    assert [s.units for s in shards] == [(0, 1, 2), (3, 4, 5), (6, 7), (8, 9)]
    assert shards == plan_shards("embed:aion", list(range(10)), 4, "k")
    assert len(plan_shards("embed:aion", [0, 1], 8, "k")) == 2  # never an empty shard


def echo_setting(config, shard: Shard) -> dict:
    """A shard function that reports what reached it (module level: executors pickle it)."""
    if shard.index == 1:
        raise ValueError("shard one is broken")
    return {"units": len(shard.units), "hidden": config.detect.flow.hidden, "pid": os.getpid()}


@pytest.fixture
def job(project: Path) -> ShardJob:
    config = load_config(root=project, sets=["detect.flow.hidden=77"])
    return ShardJob(echo_setting, config, config.layout.shards("toy"))


def check(outcomes, shards) -> None:
    assert [o.status for o in outcomes] == ["done", "failed", "done"]
    assert outcomes[1].error == "ValueError: shard one is broken"
    assert all(o.result["hidden"] == 77 for o in outcomes if o.status == "done")  # the full config arrived
    assert [o.shard for o in outcomes] == shards


def test_local_pool_runs_shards_in_other_processes_and_collects_failures(job: ShardJob):
    shards = plan_shards("toy", list(range(6)), 3, "k")
    outcomes = LocalExecutor(workers=2).run(job, shards)
    check(outcomes, shards)
    assert {o.result["pid"] for o in outcomes if o.result} != {os.getpid()}
    assert shard_status(job.files, shards[0])["status"] == "done"
    assert shard_status(job.files, shards[1])["status"] == "failed"
    assert shard_status(job.files, plan_shards("toy", list(range(6)), 3, "another plan")[0]) is None


def report_gpu(config, shard: Shard) -> dict:
    import torch

    return {"pid": os.getpid(), "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "threads": torch.get_num_threads()}


def test_local_pool_gives_each_worker_its_own_gpu(project: Path):
    """One worker per GPU: the device list is handed out one entry per worker process (no GPU is
    here, so the two 'GPUs' are names; what is checked is that each worker sees only its own)."""
    config = load_config(root=project)
    shards = plan_shards("toy", list(range(8)), 8, "k")
    outcomes = LocalExecutor(workers=2, gpus=["0", "1"]).run(ShardJob(report_gpu, config, config.layout.shards("toy")),
                                                              shards)
    seen = {(o.result["pid"], o.result["gpu"]) for o in outcomes}
    assert {gpu for _, gpu in seen} <= {"0", "1"}
    assert len({pid for pid, _ in seen}) == len(seen) == len({gpu for _, gpu in seen})  # one GPU per worker, its own


def test_local_pool_divides_the_cores_among_its_workers(project: Path, monkeypatch):
    """Each worker's torch gets its share of the cores this process may run on, not all of them
    (which oversubscribes), and not of every core of the node: on a shared node (a SLURM allocation,
    `taskset`) the node has more cores (`os.cpu_count`, made 64 here) than the process's affinity."""
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 64)  # read here, in this process
    allowed = len(os.sched_getaffinity(0))
    config = load_config(root=project)
    outcomes = LocalExecutor(workers=2, gpus=[]).run(ShardJob(report_gpu, config, config.layout.shards("toy")),
                                                     plan_shards("toy", list(range(2)), 2, "k"))
    assert {o.result["threads"] for o in outcomes} == {max(1, allowed // 2)}  # 32 each before


def test_a_worker_whose_torch_is_already_loaded_still_gets_its_share(monkeypatch):
    """Spawn imports the parent's main module before the initializer runs; when that loaded torch,
    the variables come too late and the initializer must set torch's threads itself. Run here, in
    this process, where torch is loaded."""
    import queue

    import torch

    from fmb.run.executors import _start_worker

    before = torch.get_num_threads()
    for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        monkeypatch.delenv(variable, raising=False)  # restored after the test, as the initializer sets them
    devices = queue.Queue()
    devices.put(None)
    try:
        torch.set_num_threads(2)
        _start_worker(devices, threads=1)
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_submitit_local_cluster_runs_the_same_job(job: ShardJob, tmp_path: Path, monkeypatch):
    # the task process imports this test module, by the name pytest gave it
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), str(Path(__file__).parent)]))
    shards = plan_shards("toy", list(range(6)), 3, "k")
    executor = SlurmExecutor(SlurmSettings(poll_s=0.2), tmp_path / "jobs", cluster="local")
    outcomes = executor.run(job, shards)
    check(outcomes, shards)
    assert all(Path(o.log).name.endswith("_log.err") for o in outcomes)


def test_the_job_pickles_with_the_whole_config(job: ShardJob):
    copy = pickle.loads(pickle.dumps(job))
    assert copy.config.values == job.config.values and copy.config.root == job.config.root


def sbatch_text(settings: SlurmSettings, n_tasks: int, folder: Path) -> str:
    inner = SlurmExecutor(settings, folder).executor(n_tasks)._executor
    inner.parameters["map_count"] = n_tasks  # what submitit's map_array sets for an array
    return inner._make_submission_file_text("python -m submitit.core._submit FOLDER", "uid")


def test_sbatch_text_carries_every_setting(tmp_path: Path):
    settings = SlurmSettings(partition="gpu", account="euclid", qos="high", gpus_per_task=1, cpus_per_task=8,
                             mem_gb=32, timeout_min=120, array_parallelism=4, additional={"constraint": "a100"},
                             setup=["module load cuda", "source .venv/bin/activate"])
    text = sbatch_text(settings, 10, tmp_path)
    for line in ("#SBATCH --array=0-9%4", "#SBATCH --partition=gpu", "#SBATCH --account=euclid",
                 "#SBATCH --qos=high", "#SBATCH --gpus-per-task=1", "#SBATCH --cpus-per-task=8",
                 "#SBATCH --mem=32GB", "#SBATCH --time=120", "#SBATCH --constraint=a100",
                 "module load cuda", "source .venv/bin/activate"):
        assert line in text.splitlines(), line
    assert text.index("module load cuda") < text.index("# command")
    assert "#SBATCH --array=0-2%3" in sbatch_text(settings.model_copy(update={"array_parallelism": 64}), 3, tmp_path)


class Recorder:
    def __init__(self):
        self.arrays = []

    def map_array(self, job, shards):
        self.arrays.append([s.index for s in shards])
        return [Done(job(s)) for s in shards]


class Done:
    """A finished submitit job (the cluster is out of reach in a unit test; the real one is in
    tests/e2e/test_slurm.py)."""

    job_id = "1_0"

    def __init__(self, outcome):
        # an existing file stands for the result pickle submitit would have written
        self.outcome, self.paths = outcome, type("Paths", (), {"stderr": "task.err", "result_pickle": Path(__file__)})()

    def done(self):
        return True

    def result(self):
        return self.outcome


def test_arrays_are_cut_at_max_array_size(job: ShardJob, tmp_path: Path, monkeypatch):
    recorder = Recorder()
    executor = SlurmExecutor(SlurmSettings(max_array_size=4), tmp_path)
    monkeypatch.setattr(executor, "executor", lambda n_tasks: recorder)
    shards = [s for s in plan_shards("toy", list(range(10)), 10, "k") if s.index != 1]
    outcomes = executor.run(job, shards)
    assert recorder.arrays == [[0, 2, 3, 4], [5, 6, 7, 8], [9]]
    assert [o.shard.index for o in outcomes] == [s.index for s in shards] and outcomes[0].log == "task.err"
    assert np.all([o.status == "done" for o in outcomes])

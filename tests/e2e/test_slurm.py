"""`fmb embed` and `fmb detect` as SLURM job arrays on a real single-node cluster (`.ci/slurm.sh
start` brings one up; `.ci/run` does so before the tests). In each stage one array task is
cancelled mid-way: the run reports that shard as failed (so does `fmb status`, with the task's
log), the rerun runs only it, and the outputs equal a local run object for object."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from fmb.config import load_config
from fmb.embed import store

pytestmark = pytest.mark.skipif(
    shutil.which("sinfo") is None or "idle" not in subprocess.run(["sinfo", "-h", "-o", "%t"], capture_output=True,
                                                                   text=True).stdout,
    reason="no SLURM cluster here: `.ci/slurm.sh start` (as root) starts the single-node one CI uses")

SETTINGS = ["synth.n=120", "synth.workers=1", "models.pixels.components=6", "models.pixels.image_size=8",
            "models.pixels.embed.num_workers=0", "models.pixels.adapt.num_workers=0",
            "models.pixels.embed.rows_per_shard=30", "run.models=[pixels]", "detect.folds=2",
            "detect.pca_components=6", "detect.flow.hidden=16", "detect.flow.min_steps=40",
            "detect.flow.max_steps=40"]
SLURM = ["executor.kind=slurm", "executor.slurm.cpus_per_task=1", "executor.slurm.mem_gb=1",
         "executor.slurm.array_parallelism=4", "executor.slurm.poll_s=0.5", "executor.slurm.timeout_min=10",
         # every task sleeps first: a window in which one is surely running and not yet done
         "executor.slurm.setup=[\"sleep 3\"]"]


def fmb(project: Path, *args: str, sets=SETTINGS, background=False):
    command = [sys.executable, "-c", "from fmb.cli import main; main()", *args,
               *[arg for s in sets for arg in ("--set", s)]]
    if background:
        return subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return subprocess.run(command, cwd=project, capture_output=True, text=True, timeout=900)


def running_array_tasks() -> list[str]:
    out = subprocess.run(["squeue", "-h", "-r", "-o", "%i %T"], capture_output=True, text=True).stdout
    return [line.split()[0] for line in out.splitlines() if line.endswith("RUNNING") and "_" in line.split()[0]]


def cancel_one_task_of(process: subprocess.Popen) -> str:
    """Wait for an array task of the submission to run, cancel it, wait for the command to end."""
    deadline = time.time() + 300
    while time.time() < deadline and not running_array_tasks():
        time.sleep(0.2)
    victim = running_array_tasks()[0]
    subprocess.run(["scancel", victim], check=True)
    _, err = process.communicate(timeout=600)
    assert process.returncode == 2, err
    return err


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "fmb.yaml").write_text("name: cluster\ndata:\n  source: data/synth\nsynth:\n  out: data/synth\n")
    for step in (["data", "synth"], ["data", "index"], ["adapt", "pixels"]):
        result = fmb(tmp_path, *step)
        assert result.returncode == 0, result.stderr
    return tmp_path


def test_embed_and_detect_as_job_arrays_survive_a_cancelled_task(project: Path):
    for stage in (["embed", "pixels"], ["detect"]):
        err = cancel_one_task_of(fmb(project, *stage, sets=SETTINGS + SLURM, background=True))
        name = ":".join(stage) if stage[0] == "embed" else "detect"
        assert f"1 of 4 shards of {name} failed" in err and "rerunning the same command runs only those" in err
        status = fmb(project, "status").stdout
        assert f"{name}: 4 shards on slurm: 3 done, 0 running, 1 failed, 0 not started" in status, status
        assert "_log.err" in status  # the failed task's log is named
        again = fmb(project, *stage, sets=SETTINGS + SLURM)
        assert again.returncode == 0, again.stderr
        assert "4 shards (3 done before), 1 to run on slurm" in again.stdout

    config = load_config(root=project, sets=SETTINGS)
    for stage in ("embed:pixels", "detect"):
        shards = config.layout.shards(stage)
        assert [json.loads(p.read_text())["status"] for p in shards.statuses()] == ["done"] * 4
        assert list(Path(str(shards.job_logs).replace("%j", "")).glob("*/*_log.err"))  # a log per task
    for step in (["data", "index"], ["adapt", "pixels"], ["embed", "pixels"], ["detect"]):  # the same, in one process
        local = fmb(project, *step, sets=SETTINGS + ["name=local"])
        assert local.returncode == 0, local.stderr
    local = load_config(root=project, sets=SETTINGS + ["name=local"])
    ids, got = store.load_embeddings(config.layout.embeddings("pixels").dir)
    ids_local, expected = store.load_embeddings(local.layout.embeddings("pixels").dir)
    np.testing.assert_array_equal(ids, ids_local)
    for modality in expected:
        np.testing.assert_array_equal(got[modality], expected[modality])
    pd.testing.assert_frame_equal(pq.read_table(config.layout.scores.table("pixels")).to_pandas(),
                                  pq.read_table(local.layout.scores.table("pixels")).to_pandas())


def test_a_stage_without_shards_is_one_job_and_a_refused_submission_is_one_line(project: Path):
    """`fmb adapt --slurm` runs as one job on the real cluster; when sbatch refuses a submission (here a
    partition the cluster does not have), an array and a single job alike end in one line naming
    sbatch's reason, exit code 2, no traceback."""
    one_job = fmb(project, "adapt", "pixels", "--force", sets=SETTINGS + SLURM)
    assert one_job.returncode == 0, one_job.stderr
    assert "submitting adapt:pixels as one slurm job" in one_job.stdout + one_job.stderr
    logs = load_config(root=project, sets=SETTINGS).layout.shards("adapt:pixels").job_logs
    assert list(Path(str(logs).replace("%j", "")).glob("*/*_log.out"))  # it ran as a SLURM job
    refused = SETTINGS + SLURM + ["executor.slurm.partition=nosuch"]
    for stage, what in ((["adapt", "pixels", "--force"], "the job"), (["embed", "pixels"], "an array of 4 tasks")):
        result = fmb(project, *stage, sets=refused)
        output = result.stdout + result.stderr
        assert result.returncode == 2 and "Traceback" not in output, output
        assert f"sbatch refused {what}: sbatch: error:" in output and "nosuch" in output, output


def _timed_lines(process: subprocess.Popen) -> list[tuple[float, str]]:
    """(seconds since start, line) of everything the command printed, as it printed it."""
    started, lines = time.monotonic(), []
    for line in process.stdout:
        lines.append((time.monotonic() - started, line.rstrip("\n")))
    process.wait(timeout=60)
    return lines


def test_force_on_slurm_resubmits_every_shard_and_says_how_it_goes(project: Path):
    """`--force` with `--slurm` starts the stage's shards over on the cluster (none counts as done
    from the last run) and finishes; while it waits the command prints a progress line at least
    every 30 s; the summary counts the parts the tasks wrote."""
    first = fmb(project, "embed", "pixels", sets=SETTINGS + SLURM)
    assert first.returncode == 0, first.stderr
    assert "(4 of 4 parts written now" in first.stdout, first.stdout
    slow = [s for s in SLURM if not s.startswith("executor.slurm.setup")] + ["executor.slurm.setup=[\"sleep 40\"]"]
    command = [sys.executable, "-c", "from fmb.cli import main; main()", "embed", "pixels", "--force",
               *[arg for s in SETTINGS + slow for arg in ("--set", s)]]
    process = subprocess.Popen(command, cwd=project, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={**os.environ, "PYTHONUNBUFFERED": "1", "COLUMNS": "200"})
    lines = _timed_lines(process)
    text = "\n".join(line for _, line in lines)
    assert process.returncode == 0, text
    assert "4 shards (0 done before), 4 to run on slurm" in text and "(4 of 4 parts written now" in text, text
    waiting = [at for at, line in lines if line.strip().startswith("waiting for 4 SLURM task(s): ")]
    assert waiting and re.search(r"\d+ done, \d+ running or queued, \d+ failed", text), text
    submitted = next(at for at, line in lines if "to run on slurm" in line)
    marks = [submitted, *waiting]  # the tasks sleep 40 s first: the command waits longer than 30 s
    assert max(b - a for a, b in zip(marks, marks[1:])) < 30, lines
    detect = fmb(project, "detect", "--force", sets=SETTINGS + SLURM)
    assert detect.returncode == 0, detect.stderr
    status = fmb(project, "status").stdout
    assert "embed:pixels: 4 shards on slurm: 4 done" in status and "detect: 4 shards on slurm: 4 done" in status, status


def test_a_task_cancelled_while_its_python_runs_shows_its_log_in_status(project: Path):
    """Cancelled once its Python has started (submitit's first log line, before the shard runs):
    the command and `fmb status` name the task's log, never a traceback."""
    process = fmb(project, "embed", "pixels", sets=SETTINGS + SLURM, background=True)
    jobs = Path(str(load_config(root=project, sets=SETTINGS).layout.shards("embed:pixels").job_logs).replace("%j", ""))
    deadline, victim = time.time() + 300, None
    while victim is None and time.time() < deadline:
        for log in jobs.glob("*/*_log.*"):
            if "Starting with JobEnvironment" in log.read_text(errors="replace"):
                victim = log.name.rsplit("_log.", 1)[0].rsplit("_", 1)[0]  # <job>_<array task>_<rank>_log.out
                break
        time.sleep(0.1)
    assert victim, "no task started"
    subprocess.run(["scancel", "--signal=KILL", "--full", victim], check=True)  # at once, not after KillWait
    _, err = process.communicate(timeout=600)
    assert process.returncode == 2 and "Traceback" not in err and "_log.err" in err, err
    status = fmb(project, "status")
    assert "Traceback" not in status.stdout + status.stderr, status.stdout
    failed = [line for line in status.stdout.splitlines() if "failed:" in line and "shard" in line]
    assert len(failed) == 1 and re.search(r"\(log \S+_log\.err\)", failed[0]), status.stdout

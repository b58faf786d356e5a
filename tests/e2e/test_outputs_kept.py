"""A mistake never costs a user their outputs (issue 27): on a finished run (a copy of the shared
`pipeline`), each stage kind (data, adapt, embed, detect, an analysis) is killed with SIGKILL while
it works, and fails on a bad argument or a refused input; afterwards every file the run had is
byte-identical. A stage keyed per model touches only the models it runs."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmb.layout import RunLayout, crash_logs
from tests.conftest import fmb_main

RUN = ["--run", "pipeline"]


def layout(project: Path) -> RunLayout:
    return RunLayout.of(project, "pipeline")


def snapshot(project: Path) -> dict[str, str]:
    """sha256 of every file of the project but the engine's own records (state, settings, staging
    copies, shard records) and crash logs, which a failed or killed attempt may add to."""
    run = layout(project)
    skipped = (run.state.parent, run.shards_dir, crash_logs(project))
    return {str(path.relative_to(project)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(project.rglob("*"))
            if path.is_file() and not any(path.is_relative_to(directory) for directory in skipped)}


def assert_kept(before: dict[str, str], project: Path) -> None:
    after = snapshot(project)
    changed = [path for path, digest in before.items() if after.get(path) != digest]
    assert not changed, f"{len(changed)} previous outputs changed or removed, e.g. {changed[:5]}"


def one_line(err: str) -> str:
    assert "Traceback" not in err and "error: unexpected" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def staging_started(project: Path, stage: str) -> bool:
    """The stage has begun writing its staging copies (past its checks)."""
    return layout(project).staging(stage).key.is_file()


def kill_while_working(project: Path, stage: str, *args: str, after_s: float = 0.5) -> None:
    """`fmb ARGS` in its own process, SIGKILLed once the stage has worked `after_s` in its staging copies."""
    process = subprocess.Popen([sys.executable, "-m", "fmb.cli", *args], cwd=project, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    deadline = time.monotonic() + 300
    try:
        while not staging_started(project, stage):
            assert process.poll() is None, f"fmb {' '.join(args)} ended (exit {process.returncode}) before it was killed"
            assert time.monotonic() < deadline, "the stage never started"
            time.sleep(0.1)
        time.sleep(after_s)
        assert process.poll() is None, f"fmb {' '.join(args)} finished before it could be killed"
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()


KILLED = [
    ("synth", ["data", "synth", "--force"]),  # data: its output is the survey directory outside the run
    ("adapt:astroclip", ["adapt", "astroclip", "--force"]),
    ("embed:astroclip", ["embed", "astroclip", "--force"]),
    ("detect", ["detect", "--force"]),
    ("similarity", ["analyze", "similarity", "--force"]),
]


@pytest.mark.parametrize("stage, command", KILLED, ids=[stage for stage, _ in KILLED])
def test_a_stage_killed_while_it_works_leaves_every_previous_output(pipeline_copy: Path, stage: str, command):
    before = snapshot(pipeline_copy)
    kill_while_working(pipeline_copy, stage, *command, *RUN)
    assert_kept(before, pipeline_copy)


def _garbage_pt(project: Path) -> list[str]:
    (project / "garbage.pt").write_bytes(b"not a torch file at all" * 40)
    return ["import", "embeddings", "garbage.pt", "--model", "astroclip", "--force"]


def _planted_best(project: Path) -> list[str]:
    """Weights that are not fmb's: a torch file whose pickle names os.system."""
    import torch

    class Planted:
        def __reduce__(self):
            return (os.system, ("echo planted",))

    torch.save({"state_dict": Planted()}, project / "evil.pt")
    return ["adapt", "astroclip", "--force", "--set", "models.astroclip.weights=evil.pt"]


def _planted_best_for_embed(project: Path) -> list[str]:
    """The same file planted where embed reads the adapted weights (best.pt)."""
    _planted_best(project)
    layout(project).model("astroclip").best.write_bytes((project / "evil.pt").read_bytes())
    return ["embed", "astroclip", "--force"]


REFUSED = [
    ("data", lambda project: ["data", "index", "--force", "--set", "data.source=no/such/directory"]),
    ("adapt", _planted_best),
    ("embed", _garbage_pt),
    ("embed-planted-best", _planted_best_for_embed),
    ("detect", lambda project: ["detect", "--model", "pixles"]),
    ("detect-bound", lambda project: ["detect", "--force", "--set", "detect.folds=1000000000"]),
    ("analysis", lambda project: ["analyze", "agreement", "--force", "--set", "analyze.agreement.top_pct=500"]),
]


@pytest.mark.parametrize("kind, command", REFUSED, ids=[kind for kind, _ in REFUSED])
def test_a_refused_argument_or_input_leaves_every_previous_output(pipeline_copy: Path, monkeypatch, capsys, kind, command):
    arguments = command(pipeline_copy)
    before = snapshot(pipeline_copy)
    code, err = fmb_main(pipeline_copy, monkeypatch, capsys, *arguments, *RUN)
    assert code == 2
    one_line(err)
    assert_kept(before, pipeline_copy)


def test_a_typo_in_a_model_name_is_refused_before_anything_is_touched(pipeline_copy: Path, monkeypatch, capsys):
    before = snapshot(pipeline_copy)
    state = layout(pipeline_copy).state.read_bytes()
    code, err = fmb_main(pipeline_copy, monkeypatch, capsys, "detect", "--model", "pixles", *RUN)
    assert code == 2 and "'pixles'" in one_line(err) and "pixels" in err
    assert_kept(before, pipeline_copy)
    assert layout(pipeline_copy).state.read_bytes() == state
    assert not layout(pipeline_copy).staging("detect").dir.exists()


def test_detect_one_model_leaves_the_other_models_tables(pipeline_copy: Path, monkeypatch, capsys):
    scores = layout(pipeline_copy).scores
    others = {path: path.read_bytes() for path in [scores.table("pixels"), *sorted(scores.detectors("pixels").parent.rglob("*"))]
              if path.is_file()}
    code, _ = fmb_main(pipeline_copy, monkeypatch, capsys, "detect", "--model", "astroclip", "--force", *RUN)
    assert code == 0
    assert {path: path.read_bytes() for path in others} == others
    assert scores.table("astroclip").is_file() and scores.consensus.is_file()
    import pyarrow.parquet as pq

    assert pq.read_table(scores.consensus).column("n_models").to_pylist().count(2) > 0  # both models

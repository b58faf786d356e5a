"""The user's path after `make demo`: a run made from task files is taken by every command with
`--run` alone (its settings live in the run), the merge of two models finishes, and `fmb app`
serves the run and says where. On the session's shared pipeline run (tests/conftest.py)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.conftest import fmb_main, run_cli

RUN = "pipeline"


def layout(project: Path):
    """Every path of the pipeline run (it remembers its own settings: only its name is given)."""
    from fmb.config import load_config

    return load_config(cli={"name": RUN}, root=project).layout


def ok(project: Path, *args: str) -> str:
    result = run_cli(project, *args)
    assert result.exit_code == 0, result.output
    return result.output


def test_two_models_merge_into_a_consensus(pipeline: Path):
    """The demo's merge: two models, the aligned one with the critic's agreement (a one-row query on
    the merge's connection), then the consensus join on the same connection (failed before the fix:
    'connection has an unfinished result')."""
    scores = layout(pipeline).scores
    summary = json.loads(scores.summary.read_text())
    assert set(summary) == {"pixels", "astroclip"}
    assert "spearman_learned_vs_cosine_mismatch" in summary["astroclip"]
    consensus = pq.read_table(scores.consensus).to_pandas()
    assert len(consensus) == summary["pixels"]["objects"] and consensus.n_models.max() == 2
    assert not scores.spill.exists()  # the merge's spill directory is fmb's own, and removed


@pytest.mark.parametrize("run", [RUN, "by directory"])
def test_a_dry_run_on_the_run_alone_finds_every_stage_unchanged(pipeline: Path, run: str):
    run = str(layout(pipeline).root.relative_to(pipeline)) if run == "by directory" else run
    lines = [line for line in ok(pipeline, "run", "--run", run, "--dry-run").splitlines() if line.strip()]
    stages = {line.split()[0]: line for line in lines}
    assert {"synth", "index", "adapt:pixels", "embed:astroclip", "detect", "report"} <= set(stages)
    assert all(" skip " in line for line in stages.values()), "\n".join(lines)
    assert "differ" not in "\n".join(lines)


def test_show_report_status_and_config_take_the_run_alone(pipeline: Path):
    object_id = int(pq.read_table(layout(pipeline).data.index, columns=["object_id"]).column("object_id")[3].as_py())
    assert f"object_{object_id}.png" in ok(pipeline, "data", "show", str(object_id), "--run", RUN)
    assert "nothing changed" in ok(pipeline, "report", "--run", RUN)
    assert "done" in ok(pipeline, "status", "--name", RUN)
    shown = ok(pipeline, "config", "show", "--run", RUN)
    assert "run pipeline: task file pipeline.yaml" in shown and "data/pipeline" in shown


def test_a_setting_that_changes_results_is_said_before_anything_is_written(pipeline: Path):
    run_dir = layout(pipeline).settings.parent
    before = {path.name: path.read_bytes() for path in run_dir.iterdir()}
    output = ok(pipeline, "run", "--run", RUN, "--set", "detect.folds=3", "--dry-run")
    assert "settings differ from those its stages last ran with: detect.folds: 2 -> 3 (command line)" in output
    assert {path.name: path.read_bytes() for path in run_dir.iterdir()} == before
    # a runtime-only setting (how fast, not what) is not a difference
    assert "differ" not in ok(pipeline, "run", "--run", RUN, "--set", "models.pixels.embed.batch_size=7", "--dry-run")


def test_the_app_serves_the_run_and_says_where(pipeline: Path):
    from tests.app.live import free_port

    port = free_port()
    fmb = Path(sys.executable).with_name("fmb")
    app = subprocess.Popen([str(fmb), "app", "--run", RUN, "--port", str(port)], cwd=pipeline,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        said = [app.stdout.readline() for _ in range(2)]
        assert f"run {RUN}" in said[0] and f"http://127.0.0.1:{port}/" in said[0], said
        assert "Ctrl+C" in said[1]
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/list?page=0", timeout=10) as response:
                    listed = json.loads(response.read())
                break
            except OSError:
                assert time.monotonic() < deadline and app.poll() is None, "the app did not answer"
                time.sleep(0.3)
        assert listed["rows"] if "rows" in listed else listed
    finally:
        app.terminate()
        app.wait(timeout=30)


def test_uncached_weights_fail_at_once_when_the_hub_cannot_be_reached(pipeline_copy: Path, monkeypatch, capsys,
                                                                     tmp_path: Path):
    """No network: the released AION preset, nothing cached, fails in seconds (not after five hub
    retries per file) with the line naming `fmb setup download`. `.invalid` never resolves (RFC 2606)."""
    import huggingface_hub.constants as constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf" / "hub"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "ENDPOINT", "https://hub.invalid")
    started = time.monotonic()
    code, said = fmb_main(pipeline_copy, monkeypatch, capsys, "adapt", "aion", "--run", RUN)
    elapsed = time.monotonic() - started
    assert code == 2 and "fmb setup download" in said and "Traceback" not in said, said
    assert elapsed < 5.0, f"{elapsed:.1f} s: {said}"

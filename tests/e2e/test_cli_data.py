"""The data commands through the real CLI entry point."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
from typer.testing import CliRunner

from fmb.cli import app
from fmb.config import load_config
from tests.conftest import tagged_row, write_rows

runner = CliRunner()


def fmb(project: Path, *args: str, monkeypatch) -> object:
    monkeypatch.chdir(project)
    result = runner.invoke(app, list(args))
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result


def test_index_validate_show_on_a_parquet_directory(project: Path, monkeypatch):
    rows = [tagged_row(i, size=32) for i in range(40, 52)]
    rows[5]["spectrum"]["error"][:10] = 0.0
    rows[7]["spectrum"]["flux"] = rows[7]["spectrum"]["flux"][:50]
    write_rows(project / "mydata" / "part-0.parquet", rows)

    result = fmb(project, "data", "index", "--source", "mydata", monkeypatch=monkeypatch)
    assert result.exit_code == 0 and "indexed 12 objects in 1 shards" in result.output

    result = fmb(project, "data", "validate", "--source", "mydata", monkeypatch=monkeypatch)
    assert result.exit_code == 0
    layout = load_config(root=project).layout
    summary = json.loads(layout.data.validation.read_text())
    assert summary["usable_objects"] == 12 and summary["modalities_dropped"] == 1 and summary["repairs"] == 1
    rejects = pq.read_table(layout.data.rejects).to_pylist()
    assert {(r["object_id"], r["field"], r["location"]) for r in rejects} == {
        (45, "spectrum.error", "part-0.parquet:5"),
        (47, "spectrum.flux", "part-0.parquet:7"),
    }

    result = fmb(project, "data", "show", "44", "--source", "mydata", monkeypatch=monkeypatch)
    assert result.exit_code == 0
    png = layout.object_figure(44)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 20_000


def test_config_show_reports_origins(project: Path, monkeypatch):
    result = fmb(project, "config", "show", "--set", "synth.n=77", monkeypatch=monkeypatch)
    assert result.exit_code == 0
    line = next(line for line in result.output.splitlines() if "synth.n " in line)
    assert "77" in line and "command line" in line


def test_user_errors_are_one_line_and_exit_2(project: Path):
    result = subprocess.run(
        [sys.executable, "-c", "from fmb.cli import main; main()", "data", "index", "--source", "missing_dir"],
        cwd=project, capture_output=True, text=True,
    )
    assert result.returncode == 2
    assert "error:" in result.stderr and "missing_dir is not a directory" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_every_command_has_help():
    for args in (["--help"], ["data", "--help"], ["data", "synth", "--help"], ["data", "index", "--help"],
                 ["data", "validate", "--help"], ["data", "show", "--help"], ["config", "show", "--help"],
                 ["adapt", "--help"], ["embed", "--help"], ["detect", "--help"], ["detect", "score", "--help"],
                 ["analyze", "--help"], ["analyze", "evaluate", "--help"]):
        result = runner.invoke(app, args)
        assert result.exit_code == 0 and "Usage" in result.output, args


def test_strict_validation_stops_at_the_first_bad_object(project: Path):
    rows = [tagged_row(i) for i in range(3)]
    rows[1]["NISP_Y_image"] = None
    write_rows(project / "d" / "part-0.parquet", rows)
    result = subprocess.run(
        [sys.executable, "-c", "from fmb.cli import main; main()", "data", "validate", "--source", "d", "--strict"],
        cwd=project, capture_output=True, text=True,
    )
    assert result.returncode == 2 and "object 1, field NISP_Y_image: band image missing" in result.stderr


def test_validate_skips_later_copies_of_an_id_as_the_index_does(project: Path, monkeypatch):
    rows = [tagged_row(i) for i in range(60, 66)]
    for key in ("VIS_image", "RGB_image", "spectrum"):
        rows[1][key] = None  # 61 is unusable: its first row is still the one the index keeps
    rows += [tagged_row(61, seed=1), tagged_row(63, seed=2)]
    write_rows(project / "d" / "part-0.parquet", rows[:5])
    write_rows(project / "d" / "part-1.parquet", rows[5:])

    assert "indexed 6 objects" in fmb(project, "data", "index", "--source", "d", monkeypatch=monkeypatch).output
    assert fmb(project, "data", "validate", "--source", "d", monkeypatch=monkeypatch).exit_code == 0
    layout = load_config(root=project).layout
    summary = json.loads(layout.data.validation.read_text())
    assert summary["usable_objects"] == 5 and summary["skipped_objects"] == 3  # 6 indexed, 61 unusable
    rejects = pq.read_table(layout.data.rejects).to_pylist()
    duplicates = {stage: {(r["object_id"], r["location"]) for r in rejects
                          if r["stage"] == stage and "duplicate" in r["reason"]} for stage in ("index", "validate")}
    assert duplicates["validate"] == duplicates["index"] == {(61, "part-1.parquet:1"), (63, "part-1.parquet:2")}
    reasons = {r["reason"] for r in rejects if r["stage"] == "validate" and r["field"] == "object_id"}
    assert reasons == {"duplicate of the row at part-0.parquet:1", "duplicate of the row at part-0.parquet:3"}


def test_help_paragraphs_wrap_at_the_terminal_not_at_the_docstring():
    """A command's help paragraph is one flow of text: at a wide terminal each sentence stays on one
    line, where Typer's rich help would break it wherever the docstring's source lines end."""
    wide = {"COLUMNS": "400", "TERMINAL_WIDTH": "400"}
    for args, sentence in ((["run", "--help"], "With --slurm every stage that runs goes to SLURM: job arrays"),
                           (["analyze", "--help"], "AUROC, recall@1%/5%, per anomaly class and overall")):
        lines = runner.invoke(app, args, env=wide).output.splitlines()
        assert any(sentence in line for line in lines), args

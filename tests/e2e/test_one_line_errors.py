"""User mistakes and damaged files end in one line through the real entry point (`fmb.cli.main`):
what is wrong, naming the key or file, and what to do; never a traceback unless asked for."""

import importlib
import os
import re
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from fmb.cli import app
from fmb.config import load_config
from fmb.data.index import ObjectIndex
from fmb.layout import RunLayout, crash_logs
from tests.conftest import fmb_main, fmb_said

PIXELS = ["--set", "models.pixels.components=6", "--set", "models.pixels.image_size=8",
          "--set", "models.pixels.embed.num_workers=0", "--set", "models.pixels.adapt.num_workers=0",
          "--set", "run.models=[pixels]", "--set", "detect.folds=2", "--set", "detect.flow.max_steps=40",
          "--set", "detect.flow.min_steps=40", "--set", "detect.mismatch.min_steps=40",
          "--set", "detect.mismatch.max_steps=40"]
SURVEY = ["--set", "synth.n=60", "--set", "synth.workers=1"]


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """A project with a 60-object survey, indexed, and pixel-reference embeddings."""
    root = tmp_path_factory.mktemp("embedded")
    (root / "fmb.yaml").write_text("name: test\ndata:\n  source: data/synth\nsynth:\n  out: data/synth\n")
    runner, cwd = CliRunner(), os.getcwd()
    os.chdir(root)
    try:
        for command in (["data", "synth"], ["data", "index"], ["adapt", "pixels"], ["embed", "pixels"]):
            result = runner.invoke(app, [*command, *SURVEY, *PIXELS], catch_exceptions=False)
            assert result.exit_code == 0, result.output
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture
def project(embedded: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "project"
    shutil.copytree(embedded, copy, symlinks=True)
    return copy


fmb = fmb_main


def one_line(message: str) -> str:
    assert "Traceback" not in message
    lines = message.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), message
    return lines[0]


@pytest.mark.parametrize("setting, named", [("seed=-1", "seed"), ("models.astropt.image_size=20", "models.astropt.image_size")])
def test_a_bad_setting_names_its_key(tmp_path: Path, monkeypatch, capsys, setting: str, named: str):
    code, err = fmb(tmp_path, monkeypatch, capsys, "config", "show", "--set", setting)
    assert code == 2 and f"{named}: Input should be" in one_line(err) and "(from command line)" in err


def test_detect_with_lof_alone_runs(project: Path, monkeypatch, capsys):
    code, err = fmb(project, monkeypatch, capsys, "detect", "--method", "lof", *PIXELS)
    assert code == 0, err
    assert "score_joint_lof" in load_config(root=project).layout.scores.table("pixels").read_bytes().decode("latin-1")


def test_a_corrupt_state_file_is_named(project: Path, monkeypatch, capsys):
    load_config(root=project).layout.state.write_text("{ truncated")
    code, err = fmb(project, monkeypatch, capsys, "detect", *PIXELS)
    assert code == 2 and "state.json is corrupt" in one_line(err) and "delete it" in err


@pytest.mark.parametrize("damage", ["corrupt manifest", "missing part", "corrupt part"])
def test_damaged_embeddings_are_named(project: Path, monkeypatch, capsys, damage: str):
    files = load_config(root=project).layout.embeddings("pixels")
    if damage == "corrupt manifest":
        files.manifest.write_text('{"parts": ')
    elif damage == "missing part":
        files.part(0).unlink()
    else:
        files.part(0).write_bytes(b"PAR1 not really")
    code, err = fmb(project, monkeypatch, capsys, "detect", *PIXELS)
    line = one_line(err)
    assert code == 2
    assert ("manifest.json is corrupt" in line) if damage == "corrupt manifest" else (
        "part-00000.parquet is missing or unreadable" in line) if damage == "missing part" else (
        "part-00000.parquet does not match the sha256 its manifest records" in line)
    assert "embed" in line  # what to do


def test_a_diverging_adaptation_says_which_setting_to_change(project: Path, monkeypatch, capsys):
    code, err = fmb(project, monkeypatch, capsys, "adapt", "astroclip", "--config", str(_tiny()), *PIXELS,
                    "--set", "models.astroclip.adapt.lr=1e12", "--set", "models.astroclip.adapt.grad_clip=0",
                    "--set", "models.astroclip.adapt.num_workers=0")
    line = one_line(err.splitlines()[-1])
    assert code == 2 and "adaptation diverged" in line and "lower adapt.lr (now 1e+12)" in line


def _tiny() -> Path:
    return Path(__file__).resolve().parents[2] / "configs" / "adapt" / "tiny.yaml"


@pytest.mark.parametrize("debug", ["none", "flag", "environment"])
def test_an_unexpected_error_is_one_line_with_its_log(project: Path, monkeypatch, capsys, debug: str):
    # there is no known bug to trigger, so one is planted: the report's writer fails as a bug would
    def broken(*_args, **_kwargs):
        raise ZeroDivisionError("float division by zero")

    monkeypatch.setattr(importlib.import_module("fmb.analyze.report"), "report", broken)
    if debug == "environment":
        monkeypatch.setenv("FMB_DEBUG", "1")
    args = ["report", *(["--debug"] if debug == "flag" else []), *PIXELS]

    code, err = fmb(project, monkeypatch, capsys, *args)

    last = err.strip().splitlines()[-1]
    assert code == 1 and last.startswith("error: unexpected ZeroDivisionError: float division by zero")
    logs = list(crash_logs(project).glob("fmb-*.log"))
    assert len(logs) == 1 and str(logs[0]) in last
    assert "Traceback" in logs[0].read_text() and "in broken" in logs[0].read_text()
    assert ("Traceback" in err) == (debug != "none")


def test_a_non_numeric_sed_and_a_decompression_bomb_are_noted_and_dropped(tmp_path: Path, monkeypatch, capsys):
    """Two inputs that used to end in a traceback, read from a user's Parquet file through the CLI."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from tests.conftest import tagged_row, write_rows
    from tests.unit.test_validate import png_declaring

    (tmp_path / "fmb.yaml").write_text("name: test\ndata:\n  source: survey\n")
    path = write_rows(tmp_path / "survey" / "part-0.parquet", [tagged_row(100 + i, size=32) for i in range(3)])
    table = pq.read_table(path)
    sed = pa.array([{"flux_g": "abc"}, {"flux_g": "1.5"}, None], pa.struct([("flux_g", pa.string())]))
    rgb = pa.array([None, {"bytes": png_declaring(100_000, 100_000), "path": None}, None],
                   table.schema.field("RGB_image").type)
    table = table.set_column(table.schema.get_field_index("sed_data"), "sed_data", sed)
    table = table.set_column(table.schema.get_field_index("RGB_image"), "RGB_image", rgb)
    pq.write_table(table, path)

    for command in (["data", "index"], ["data", "validate"]):
        code, err = fmb(tmp_path, monkeypatch, capsys, *command)
        assert code == 0 and "Traceback" not in err, err

    rejects = pq.read_table(load_config(root=tmp_path).layout.data.rejects).to_pandas()
    found = {(row.object_id, row.field, row.action) for row in rejects.itertuples()}
    assert (100, "sed_data.flux_g", "noted") in found
    assert (101, "RGB_image", "modality dropped") in found
    bomb = rejects[(rejects.object_id == 101) & (rejects.field == "RGB_image")].reason.iloc[0]
    assert "not decoded" in bomb


# -- issue 27: every error a user can cause is one line saying what to do ----------------------------
RUN = ["--run", "pipeline"]


@pytest.mark.parametrize("value, said", [
    ("detect.flow.hidden=[1,2", "detect.flow.hidden: '[1,2' is not a YAML value"),
    ("seed=!!python/object/apply:os.system [echo x]", "seed: "),
    ("detect.folds=1000000000", "detect.folds: Input should be less than or equal to 100"),
    ("synth.n=100000000000", "synth.n: Input should be less than or equal to"),
    ("name=" + "a" * 300, "name: String should have at most 100 characters"),
    ("data.\x1e=1", "data."),
])
def test_a_bad_set_value_is_one_line(tmp_path: Path, monkeypatch, capsys, value: str, said: str):
    code, err = fmb(tmp_path, monkeypatch, capsys, "config", "show", "--set", value)
    assert code == 2 and said in one_line(err), err


def test_a_huge_float_count_in_a_task_file_is_refused(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "task.yaml").write_text("synth: {n: 1.0e+30}\ndetect: {folds: 1.0e+9}\n")
    code, err = fmb(tmp_path, monkeypatch, capsys, "config", "show", "--config", "task.yaml")
    line = one_line(err)
    assert code == 2 and "synth.n: " in line and "detect.folds: Input should be less than or equal to 100" in line
    assert "task.yaml" in line


def test_an_output_that_cannot_be_written_is_one_line(pipeline: Path, tmp_path: Path, monkeypatch, capsys):
    """An output path under a file (or on a read-only place) ended in FileExistsError, "please report it"."""
    (tmp_path / "a.csv").write_text("a file where a folder is asked for\n")
    code, err = fmb(pipeline, monkeypatch, capsys, "export", str(tmp_path / "a.csv" / "top.csv"), *RUN)
    assert code == 2 and f"cannot write {tmp_path / 'a.csv' / 'top.csv'}: File exists" in one_line(err), err


def test_a_state_file_of_other_values_is_named(pipeline_copy: Path, monkeypatch, capsys):
    load_config(root=pipeline_copy, cli={"name": "pipeline"}).layout.state.write_text('{"synth": 5}')
    for command in (["status"], ["run", "--dry-run"]):
        code, err = fmb(pipeline_copy, monkeypatch, capsys, *command, *RUN)
        assert code == 2 and "state.json is not a record fmb wrote" in one_line(err) and "delete it" in err


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def test_a_truncated_score_table_or_index_is_one_line_with_what_to_do(pipeline_copy: Path, monkeypatch, capsys):
    run = load_config(root=pipeline_copy, cli={"name": "pipeline"}).layout
    _truncate(run.scores.table("pixels"))
    code, err = fmb(pipeline_copy, monkeypatch, capsys, "analyze", "agreement", "--force", *RUN)
    line = one_line(err)
    assert code == 2 and "pixels.parquet, an input of agreement, is damaged" in line and "--force" in line
    # the stage that wrote it sees it damaged: the dry run plans it, and a plain rerun redoes it (it
    # said "nothing changed", while export and report failed on it)
    code, said = fmb_said(pipeline_copy, monkeypatch, capsys, "run", "--dry-run", *RUN)
    assert code == 0 and re.search(r"detect\s.*pixels\.parquet.*not readable Parquet", said), said
    code, said = fmb_said(pipeline_copy, monkeypatch, capsys, "detect", *RUN)
    assert code == 0 and "nothing changed" not in said and not run.scores.table("pixels").stat().st_size < 4096, said
    _truncate(run.data.index)
    code, err = fmb(pipeline_copy, monkeypatch, capsys, "data", "show", "5", *RUN)
    line = one_line(err)
    assert code == 2 and "index.parquet" in line and "`fmb run --dry-run` names a damaged output" in line


def test_detect_score_out_a_directory_is_one_line(pipeline_copy: Path, monkeypatch, capsys):
    embeddings = load_config(root=pipeline_copy, cli={"name": "pipeline"}).layout.embeddings("pixels").dir
    code, err = fmb(pipeline_copy, monkeypatch, capsys, "detect", "score", "pixels", "--embeddings", str(embeddings),
                    "--out", "runs", *RUN)
    assert code == 2 and "--out runs is a directory" in one_line(err)


def test_synth_claims_an_existing_empty_directory(tmp_path: Path, monkeypatch, capsys):
    (tmp_path / "empty").mkdir()
    code, err = fmb(tmp_path, monkeypatch, capsys, "data", "synth", "--out", "empty", "--n", "12", "--workers", "1")
    assert code == 0, err
    from fmb.layout import SurveyLayout, owner_marker

    assert SurveyLayout(tmp_path / "empty").catalog.is_file() and owner_marker(tmp_path / "empty").is_file()


def test_a_damaged_umap_cache_is_built_again(tmp_path: Path):
    import numpy as np

    from fmb.viz.umap_map import UmapSettings, cache_key, umap_coordinates

    ids, vectors = np.arange(30), np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    settings = UmapSettings(neighbors=5, min_dist=0.1, max_objects=100, seed=0)
    damaged = tmp_path / f"umap-pixels-{cache_key(ids, vectors, settings)}.npz"
    damaged.write_bytes(b"PK\x03\x04 truncated")
    mapped, xy = umap_coordinates("pixels", ids, vectors, settings, tmp_path)
    assert xy.shape == (30, 2) and np.isfinite(xy).all()
    with np.load(damaged) as rebuilt:  # the cache is whole again
        np.testing.assert_array_equal(rebuilt["xy"], xy)


def test_adapted_weights_of_another_shape_say_to_adapt_again(project: Path, monkeypatch, capsys):
    """Weights adapted by another version of fmb (a fitted tensor of another shape) end in one line
    naming the tensor and the command that adapts them again."""
    from fmb.io import read_torch, write_torch

    best = load_config(root=project).layout.model("pixels").best
    saved = read_torch(best, "adapted pixels weights")
    saved["model"]["image_part.level_mean"] = saved["model"]["image_part.level_mean"][:3]
    write_torch(saved, best)
    code, err = fmb(project, monkeypatch, capsys, "embed", "pixels", "--force", *PIXELS)
    line = one_line(err)
    assert code == 2 and "image_part.level_mean (3,) vs (4,)" in line and "`fmb adapt pixels --force`" in line


#: The commands that may name a run not yet made: they start one, or show what one would be.
NEW_RUN_COMMANDS = {("run",), ("adapt",), ("retrain",), ("data", "synth"), ("data", "index"), ("data", "validate"),
                    ("data", "show"), ("display",), ("import", "embeddings"), ("import", "scores"), ("labels", "import"),
                    ("viz", "single-object"), ("config", "show"), ("paths",), ("setup", "check")}


def run_commands() -> list[tuple[tuple[str, ...], object]]:
    """Every command of `fmb` that takes --run (a group too, when it runs on its own, as `fmb
    detect`), walked from the CLI itself, so that a new command is tested without being listed here."""
    import typer.main

    def walk(command, path: tuple[str, ...]):
        if any("--run" in parameter.opts for parameter in command.params):
            yield path, command
        for name, sub in getattr(command, "commands", {}).items():
            yield from walk(sub, (*path, name))

    return sorted(walk(typer.main.get_command(app), ()), key=lambda found: found[0])


def required_arguments(command, existing: Path) -> list[str]:
    """Values for a command's required parameters that pass the CLI's own checks: a model it knows,
    an existing file or folder where one must exist, a new file name for an output."""
    values = {"model": "pixels", "out": "out.csv", "embeddings": str(existing.parent)}
    words = []
    for parameter in (parameter for parameter in command.params if parameter.required):
        value = values.get(parameter.name, str(existing))
        words += [value] if parameter.param_type_name == "argument" else [parameter.opts[0], value]
    return words


@pytest.mark.parametrize("path, command", run_commands(), ids=lambda part: " ".join(part) if isinstance(part, tuple)
                         else "")
def test_a_misspelt_run_names_the_run_it_meant_and_creates_nothing(tmp_path: Path, monkeypatch, capsys, path,
                                                                   command):
    """A typo in --run once read the project's defaults (a report of nothing, "no truth table",
    "every part matches") or started an empty run; now every command that works on a run's outputs
    names the run that exists, and only the commands that start a run take a new name."""
    (tmp_path / "fmb.yaml").write_text("name: test\n")
    (tmp_path / "labels.csv").write_text("object_id,interest\n1,3\n")
    demo = RunLayout.of(tmp_path, "demo").root
    demo.mkdir(parents=True)
    code, said = fmb(tmp_path, monkeypatch, capsys, *path, *required_arguments(command, tmp_path / "labels.csv"),
                     "--run", "deom")
    refused = code == 2 and "--run deom: no such run" in said and "did you mean demo?" in said
    assert refused != (path in NEW_RUN_COMMANDS), (code, said)
    if refused:
        assert [p.name for p in demo.parent.iterdir()] == ["demo"]


def _survey_copy(project: Path, name: str, change) -> Path:
    """A copy of the project's survey in two parts, the second `change`d (a pyarrow table -> table)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.concat_tables(pq.read_table(part) for part in sorted((project / "data" / "synth").glob("part-*.parquet")))
    copy = project / "data" / name
    copy.mkdir()
    half = table.num_rows // 2
    pq.write_table(table.slice(0, half), copy / "first.parquet")
    pq.write_table(change(table.slice(half)), copy / "second.parquet")
    return copy


def test_a_data_file_with_its_columns_named_otherwise_is_said_not_dropped(project: Path, monkeypatch, capsys):
    """A part whose modality columns had other names (vis_image, spec) was taken for a catalog and
    its objects vanished from the survey without a word."""
    from fmb.data.sources.base import MODALITY_COLUMNS

    _survey_copy(project, "renamed", lambda table: table.rename_columns(  # as a user's own export might
        [f"{name.lower()}_" if name in MODALITY_COLUMNS else name for name in table.column_names]))
    code, said = fmb_said(project, monkeypatch, capsys, "data", "index", "--source", "data/renamed", "--run", "renamed")
    assert code == 0 and "passed over second.parquet: none of the modality columns" in said, said
    rejects = pd.read_parquet(RunLayout.of(project, "renamed").data.rejects)
    passed = rejects[rejects.field == "file"]
    assert list(passed.location) == ["second.parquet"] and "none of the modality columns" in passed.reason.iloc[0]
    assert "second.parquet" not in set(pd.read_parquet(RunLayout.of(project, "renamed").data.index).shard)


def test_a_row_whose_position_is_not_on_the_sky_is_noted(project: Path, monkeypatch, capsys):
    """RA 400 / Dec 95 became an unknown position (an export's empty RA and Dec) with no reject row."""
    import pyarrow as pa

    def off_the_sky(table):
        ra = table.column("ra").to_pylist()
        ra[0] = 400.0
        return table.set_column(table.column_names.index("ra"), "ra", pa.array(ra, pa.float64()))

    _survey_copy(project, "offsky", off_the_sky)
    for command in (["data", "index"], ["data", "validate"]):
        assert fmb(project, monkeypatch, capsys, *command, "--source", "data/offsky", "--run", "offsky")[0] == 0
    rejects = pd.read_parquet(RunLayout.of(project, "offsky").data.rejects)
    noted = rejects[rejects.field == "ra, dec"]
    assert len(noted) == 1 and noted.action.iloc[0] == "noted" and "400.0" in noted.reason.iloc[0]
    assert noted.location.iloc[0].startswith("second.parquet:0")


def test_checking_or_adapting_on_data_the_run_did_not_index_is_refused(project: Path, monkeypatch, capsys):
    """`fmb data validate --source other` validated the other data with exit 0, and was remembered:
    adapt then fitted on rows the run's index does not describe."""
    _survey_copy(project, "other", lambda table: table)
    for command in (["data", "validate"], ["adapt", "pixels", *PIXELS]):
        code, err = fmb(project, monkeypatch, capsys, *command, "--source" if command[0] == "data" else "--set",
                        "data/other" if command[0] == "data" else "data.source=data/other")
        assert code == 2 and "data/other is not the data this run indexed" in one_line(err), err
    assert load_config(root=project).data.source == "data/synth"  # the refused source is not remembered
    code, err = fmb(project, monkeypatch, capsys, "adapt", "pixels", *PIXELS, "--set", "data.spectrum_length=4000")
    assert code == 2 and "pixels reads spectra on DESI's 7781-pixel grid" in one_line(err), err  # a tensor error


def test_a_check_that_finds_no_usable_object_fails(project: Path, monkeypatch, capsys):
    """`fmb data validate` printed "usable_objects: 0" with exit 0; adapt then failed on too few objects."""
    code, err = fmb(project, monkeypatch, capsys, "data", "validate", "--set", "data.min_cutout_px=1000",
                    "--set", "data.spectrum_length=10")
    line = one_line(err)
    assert code == 2 and "is usable:" in line and "object: no usable image or spectrum" in line, line


def test_ids_of_the_wrong_type_fail_the_index_in_one_line(project: Path, monkeypatch, capsys):
    """Float ids were each refused as "missing", and the index ended "indexed 0 objects" with exit 0
    while `validate` counted every object usable."""
    for part in sorted((project / "data" / "synth").glob("part-*.parquet")):
        table = pd.read_parquet(part)
        table["object_id"] = table["object_id"].astype("float64")
        table.to_parquet(part)
    code, err = fmb(project, monkeypatch, capsys, "data", "index", "--force", "--run", "floats")
    line = one_line(err)
    assert code == 2 and "no object of" in line and "id column has type double, expected int64 (cast it" in line, line
    assert not RunLayout.of(project, "floats").data.index.exists()


@pytest.mark.parametrize("source", ["hf:./data/typo", "hf:owner/name/", "hf:https://huggingface.co/datasets/a/b"])
def test_an_hf_source_that_is_neither_a_folder_nor_a_hub_id_is_one_line(tmp_path: Path, monkeypatch, capsys, source):
    """A path typo or a pasted URL after hf: ended in huggingface_hub's HFValidationError, "please report it"."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, err = fmb(tmp_path, monkeypatch, capsys, "data", "index", "--source", source)
    assert code == 2 and f"{source}: no such local folder, and not a hub dataset id" in one_line(err), err


@pytest.mark.parametrize("setting, said", [
    ("detekt.knn.n_neighbors=5", "detekt: no such key; did you mean detect? (from command line)"),
    ("detect.knn.n_neigbors=5", "detect.knn.n_neigbors: no such key; did you mean n_neighbors? (from command line)"),
    ("detect.methods=flow", "detect.methods: Input should be a valid list: write [flow] (from command line)"),
])
def test_a_misspelt_or_misshapen_setting_says_what_it_meant(tmp_path: Path, monkeypatch, capsys, setting, said):
    """These said pydantic's "Extra inputs are not permitted" and, for a misspelt section, "(from defaults)"."""
    code, err = fmb(tmp_path, monkeypatch, capsys, "config", "show", "--set", setting)
    assert code == 2 and said in one_line(err), err


def test_a_strict_check_runs_once_and_leaves_the_run_as_it_was(project: Path, monkeypatch, capsys):
    """`fmb data validate --strict` was skipped as "nothing changed" after a plain check, or, once run,
    was remembered: every later check was strict, and the strictness re-keyed the index and every
    model, so `fmb run` would have redone them all; `fmb data show ID` said the settings differed."""
    assert fmb_said(project, monkeypatch, capsys, "data", "validate")[0] == 0
    code, said = fmb_said(project, monkeypatch, capsys, "data", "validate", "--strict")
    assert code == 0 and "usable_objects: 60" in said and "nothing changed" not in said, said
    code, said = fmb_said(project, monkeypatch, capsys, "config", "show")
    assert "'skip'" in next(line for line in said.splitlines() if "data.on_invalid" in line)
    code, said = fmb_said(project, monkeypatch, capsys, "embed", "pixels", *PIXELS)
    assert code == 0 and "nothing changed" in said and "settings differ" not in said, said
    first = int(ObjectIndex.load(load_config(root=project).layout.data.dir).ids[0])
    code, said = fmb_said(project, monkeypatch, capsys, "data", "show", str(first), "--out", "one.png")
    assert code == 0 and "settings differ" not in said, said


def test_ctrl_c_is_said(tmp_path: Path, monkeypatch, capsys):
    """Ctrl+C printed nothing (Typer's bare exit 130), and `fmb status` said the stage "failed:
    KeyboardInterrupt". The user's key press is out of a test's reach: it is stood in for by the
    KeyboardInterrupt it raises, from inside the stage's action."""
    from fmb.data import tasks

    def pressed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks, "synth", pressed)
    code, err = fmb(tmp_path, monkeypatch, capsys, "data", "synth", "--n", "10")
    assert code == 130 and "interrupted: finished outputs are kept" in one_line(err), err
    code, said = fmb_said(tmp_path, monkeypatch, capsys, "status")
    assert code == 0 and re.search(r"synth\s*│\s*interrupted", said), said


def test_a_count_given_as_the_run_name_is_said(tmp_path: Path, monkeypatch, capsys):
    """`fmb data synth -n 200` made a run named 200 of the default 2000 objects."""
    code, err = fmb(tmp_path, monkeypatch, capsys, "data", "synth", "-n", "200")
    assert code == 2 and "the number of objects is --n 200" in one_line(err)
    assert not RunLayout.of(tmp_path, "200").root.exists()


def test_an_object_id_not_in_the_survey_says_what_ids_it_has(project: Path, monkeypatch, capsys):
    code, said = fmb(project, monkeypatch, capsys, "data", "show", "123")
    assert code == 2 and "object 123: not in the index (its 60 objects have ids such as" in said, said


def test_the_app_on_a_port_in_use_is_one_line(project: Path, monkeypatch, capsys):
    import socket

    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        code, said = fmb(project, monkeypatch, capsys, "app", "--port", str(port))
    assert code == 2 and f"cannot listen on 127.0.0.1:{port}" in said and "--port" in said, said


def test_a_refused_label_file_leaves_no_label_log_behind(project: Path, monkeypatch, capsys):
    (project / "stray.csv").write_text("object_id,interest\n123,3\n")
    code, said = fmb(project, monkeypatch, capsys, "labels", "import", "stray.csv")
    assert code == 2 and "row 1: object 123, field object_id: not in this run's survey (60 objects)" in said, said
    assert not RunLayout.of(project, "test").app.labels_db.exists()


def test_a_label_files_id_written_as_a_float_is_refused_not_rounded(project: Path, monkeypatch, capsys):
    """17-digit ids read as floats were rounded to a neighbouring id (39627007000000659.0 became ...656)
    and the label stored on that other object without a word: from a spreadsheet's CSV or a float column."""
    known = int(ObjectIndex.load(load_config(root=project).layout.data.dir).ids[-1])
    assert known > 2**53 and float(known) != known
    (project / "float.csv").write_text(f"OBJECT_ID,INTEREST\n{known}.0,4\n")
    pd.DataFrame({"object_id": [float(known)], "interest": [4]}).to_parquet(project / "float.parquet")
    said = f"got {float(known)!r}: a floating-point number"  # ...659.0 is ...656.0: the float names another object
    for path in ("float.csv", "float.parquet"):
        code, err = fmb(project, monkeypatch, capsys, "labels", "import", path)
        assert code == 2 and f"row 1: field object_id: must be a 64-bit integer, {said}" in one_line(err), err
    assert not RunLayout.of(project, "test").app.labels_db.exists()
    (project / "whole.csv").write_text("object_id,interest\n3.0,4\n")  # a small whole float is its integer
    code, err = fmb(project, monkeypatch, capsys, "labels", "import", "whole.csv")
    assert code == 2 and "object 3, field object_id: not in this run's survey" in one_line(err), err
    (project / "exact.csv").write_text(f"OBJECT_ID,INTEREST,note\n{known},high,x\n{known},4,\n")  # TOPCAT's names
    code, err = fmb(project, monkeypatch, capsys, "labels", "import", "exact.csv")
    assert code == 2 and f"row 1: object {known}, field interest: must be an integer from 0 to 5, got 'high'" in err
    (project / "exact.csv").write_text(f"OBJECT_ID,INTEREST\n{known},4\n")
    assert fmb(project, monkeypatch, capsys, "labels", "import", "exact.csv")[0] == 0


@pytest.mark.parametrize("command, said", [
    (["analyze", "similarity", "--query", "123456789"], "object 123456789 has no pixels embeddings"),
    (["analyze", "figures", "--color-by", "NOPE"], "analyze.figures.color_by: no catalog column 'NOPE'"),
])
def test_a_bad_stage_argument_fails_before_the_run_remembers_it(pipeline_copy: Path, monkeypatch, capsys, command,
                                                                 said):
    """A stage that failed on a bad argument once kept it in the run's settings, so every later
    `fmb run` on the run failed the same way without it being typed again."""
    settings = load_config(root=pipeline_copy, cli={"name": "pipeline"}).layout.settings
    before = settings.read_bytes()
    code, err = fmb(pipeline_copy, monkeypatch, capsys, *command, "--force", *RUN)
    assert code == 2 and said in one_line(err), err
    assert settings.read_bytes() == before

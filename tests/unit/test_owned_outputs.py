"""fmb deletes only what it made: a synthetic survey goes to a directory fmb marks, reruns never
remove anything else, and a run name cannot climb out of the runs directory."""

from pathlib import Path

import pytest

from fmb.config import load_config
from fmb.data.synth import synthesize
from fmb.errors import ConfigError, FmbError
from fmb.layout import made_by_fmb, owner_marker
from fmb.run import run_one
from fmb.run.stages import stage_named

SMALL = ["synth.n=12", "synth.cutout_px=32", "synth.workers=1", "synth.anomaly_rate=0"]


def test_synth_refuses_a_directory_it_did_not_make_and_leaves_it_as_it_was(project: Path):
    precious = project / "notes"
    precious.mkdir()
    (precious / "thesis.tex").write_text("years of work")
    config = load_config(root=project, sets=SMALL + ["synth.out=notes"])
    with pytest.raises(FmbError, match="notes was not made by fmb .* will not delete it"):
        run_one(config, stage_named(config, "synth"), log=lambda _: None)
    assert (precious / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in precious.iterdir()) == ["thesis.tex"]


def test_the_project_directory_itself_survives_synth_out_dot(project: Path):
    (project / "keep.txt").write_text("mine")
    config = load_config(root=project, sets=SMALL + ["synth.out=."])
    with pytest.raises(FmbError, match="not made by fmb"):
        run_one(config, stage_named(config, "synth"), log=lambda _: None)
    assert (project / "keep.txt").read_text() == "mine"


def test_a_survey_fmb_made_is_rewritten_when_a_setting_changes(project: Path):
    config = load_config(root=project, sets=SMALL + ["synth.out=survey"])
    run_one(config, stage_named(config, "synth"), log=lambda _: None)
    survey = config.path("survey")
    assert owner_marker(survey).is_file() and made_by_fmb(survey, config.layout.root)
    changed = load_config(root=project, sets=SMALL + ["synth.out=survey", "synth.n=8"])
    assert run_one(changed, stage_named(changed, "synth"), log=lambda _: None).status == "ran"
    assert owner_marker(survey).is_file()


def test_a_rerun_refuses_to_delete_an_unmarked_output(project: Path):
    """A survey made before the marker existed, or a directory put there by hand after a run:
    the rerun stops with a clear error instead of deleting it."""
    config = load_config(root=project, sets=SMALL + ["synth.out=survey"])
    run_one(config, stage_named(config, "synth"), log=lambda _: None)
    owner_marker(config.path("survey")).unlink()
    changed = load_config(root=project, sets=SMALL + ["synth.out=survey", "synth.n=8"])
    with pytest.raises(FmbError, match="was not made by fmb .* will not delete it"):
        run_one(changed, stage_named(changed, "synth"), log=lambda _: None)
    assert any(config.path("survey").glob("part-*.parquet"))


@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x"])
def test_run_names_cannot_leave_runs(project: Path, name: str):
    with pytest.raises(ConfigError, match="name"):
        load_config(root=project, sets=[f"name={name}"])


def test_synthesize_itself_claims_its_directory(tmp_path: Path):
    (tmp_path / "other.txt").write_text("x")
    with pytest.raises(FmbError, match="not made by fmb"):
        synthesize(tmp_path, 4, 1, cutout_px=32, workers=1)


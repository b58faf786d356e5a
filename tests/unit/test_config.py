from pathlib import Path

import pytest

from fmb.config import find_root, load_config
from fmb.errors import ConfigError
from fmb.layout import RunLayout


def test_precedence_cli_over_task_over_project_over_defaults(project: Path):
    (project / "fmb.yaml").write_text("name: proj\nseed: 1\nsynth:\n  n: 10\n  workers: 1\n")
    task = project / "task.yaml"
    task.write_text("seed: 2\nsynth:\n  n: 20\n")
    config = load_config(task, cli={"synth.n": 30, "name": None}, root=project)
    assert (config.name, config.seed, config.synth.n, config.synth.workers) == ("proj", 2, 30, 1)
    origins = {key: origin for key, _, origin in config.explain()}
    assert origins["name"] == "project file fmb.yaml"
    assert origins["seed"].startswith("task file")
    assert origins["synth.n"] == "command line"
    assert origins["synth.cutout_px"] == "default"


def test_set_overrides_parse_yaml_values(project: Path):
    config = load_config(sets=["synth.anomaly_rate=0.02", "data.splits=[train]"], root=project)
    assert config.synth.anomaly_rate == 0.02
    assert config.data.splits == ["train"]


@pytest.mark.parametrize("sets, message", [(["synth.nn=3"], "synth.nn"), (["synth.n=-1"], "synth.n"), (["oops"], "KEY=VALUE")])
def test_bad_values_name_the_key_and_origin(project: Path, sets, message):
    with pytest.raises(ConfigError, match=message) as caught:
        load_config(sets=sets, root=project)
    if "=" in sets[0]:
        assert "command line" in str(caught.value)


def test_bad_task_file_is_a_clear_error(project: Path):
    bad = project / "bad.yaml"
    bad.write_text("synth: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad, root=project)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad, root=project)


def test_paths_resolve_under_root_and_loading_creates_nothing(project: Path):
    sub = project / "deep" / "er"
    sub.mkdir(parents=True)
    assert find_root(sub) == project
    config = load_config(root=sub)
    assert config.path("data/x") == project / "data/x"
    assert config.layout == RunLayout.of(project, "test") and config.run_dir == config.layout.root
    assert not config.layout.root.parent.exists()
    assert sorted(p.name for p in project.iterdir()) == ["deep", "fmb.yaml"]


def test_several_task_files_later_wins(project: Path):
    first, second = project / "a.yaml", project / "b.yaml"
    first.write_text("seed: 1\nsynth:\n  n: 5\n")
    second.write_text("seed: 2\n")
    config = load_config([first, second], root=project)
    assert (config.seed, config.synth.n) == (2, 5)
    assert dict((k, o) for k, _, o in config.explain())["synth.n"] == f"task file {first}"


@pytest.mark.parametrize(("setting", "key"), [("seed=-1", "seed"), ("models.astropt.image_size=100", "image_size")])
def test_settings_that_used_to_end_in_a_traceback_are_one_line_config_errors(project: Path, setting: str, key: str):
    with pytest.raises(ConfigError, match=key):
        load_config(root=project, sets=[setting])


#: Runs the real entry point (`fmb.cli.main`, the `fmb` script's) with the given arguments, then prints
#: which modules it imported: what a user's `fmb config show` or `fmb --help` loads.
_IMPORTS_OF_A_COMMAND = """
import json, sys
from fmb.cli import main
sys.argv = ["fmb", *sys.argv[1:]]
try:
    main()
except SystemExit as exit:
    code = exit.code or 0
print("MODULES " + json.dumps(sorted(sys.modules)))
sys.exit(code)
"""


@pytest.mark.parametrize("args", [["config", "show"], ["--help"], ["detect", "--help"]])
def test_config_show_and_help_import_no_model_detector_or_torch(project: Path, args: list[str]):
    """The config schema comes from the section modules alone (`fmb.plugins.ENCODER_SECTIONS`,
    `DETECTOR_SECTIONS`): loading it imports neither torch nor any model's or detector's code."""
    import json
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-c", _IMPORTS_OF_A_COMMAND, *args], cwd=project, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    output, _, modules = result.stdout.rpartition("MODULES ")
    assert "detect.flow.hidden" in output if args == ["config", "show"] else "Usage" in output
    loaded = set(json.loads(modules))
    plugin_code = {m for m in loaded if m.startswith(("fmb.models.", "fmb.detect."))
                   and m not in ("fmb.models.sections", "fmb.detect.sections")}
    assert "torch" not in loaded and not plugin_code, sorted(plugin_code)


def test_each_section_table_names_its_plugins_own_section():
    """The torch-free section tables and the plugin classes agree: one section class per plugin."""
    from fmb import plugins

    for kind, classes, sections in (("encoder", plugins.ENCODERS, plugins.ENCODER_SECTIONS),
                                    ("detector", plugins.DETECTORS, plugins.DETECTOR_SECTIONS)):
        assert set(sections) == set(classes)
        for name, target in sections.items():
            assert plugins.import_target(target) is plugins.load(kind, name).section, (kind, name)

"""The stage cache of `fmb run` on a small graph of real file-writing stages:

    source -> a -> b -> c        d (reads only the source)
"""

import shutil
from pathlib import Path

import pytest

from fmb.config import load_config
from fmb.errors import ConfigError
from fmb.run.engine import execute, select
from fmb.stage import Stage


def toy_dir(config, name: str) -> Path:
    """A toy stage's output: a directory of the run the layout gives it."""
    return config.layout.cache(f"toy_{name}")


def toy_output(config, name: str, suffix: str = "txt") -> Path:
    """<name>.<suffix> of a toy stage, in its output directory."""
    return toy_dir(config, name) / f"{name}.{suffix}"


def written(project: Path, name: str, suffix: str = "txt") -> Path:
    return toy_output(load_config(root=project), name, suffix)


def _writer(name: str, reads: str | None, runs: list[str], fail: set[str] | None = None):
    """An action writing <name>.txt from its input (so downstream fingerprints really change)."""
    def action(config, log):
        runs.append(name)
        toy_output(config, name).parent.mkdir(parents=True, exist_ok=True)
        toy_output(config, name, "partial").write_text("started")
        if fail and name in fail:
            raise RuntimeError(f"{name} broke")
        upstream = toy_output(config, reads).read_text() if reads else config.path("source.txt").read_text()
        toy_output(config, name).write_text(f"{name}({upstream}, hidden={config.detect.flow.hidden})")
        return {"wrote": name}
    return action


def graph(runs: list[str], fail: set[str] | None = None) -> list[Stage]:
    def made(name):
        return lambda c: [toy_dir(c, name)]

    def read(name):
        return lambda c: [toy_output(c, name)]

    return [
        Stage("a", _writer("a", None, runs, fail), ("data",), lambda c: [c.path("source.txt")], made("a")),
        Stage("b", _writer("b", "a", runs, fail), ("detect.flow",), read("a"), made("b"), after=("a",)),
        Stage("c", _writer("c", "b", runs, fail), (), read("b"), made("c"), after=("b",)),
        Stage("d", _writer("d", None, runs, fail), ("seed",), lambda c: [c.path("source.txt")], made("d")),
    ]


def run(project: Path, *sets: str, start=None, only=None, fail=None) -> list[str]:
    runs: list[str] = []
    config = load_config(root=project, sets=list(sets))
    outcomes = execute(config, select(graph(runs, fail), start, only), log=lambda _line: None)
    assert [o.stage for o in outcomes if o.status == "ran"] == runs
    return runs


@pytest.fixture
def project(project: Path) -> Path:
    (project / "source.txt").write_text("v1")
    return project


def test_unchanged_stages_are_skipped(project: Path):
    assert run(project) == ["a", "b", "c", "d"]
    assert run(project) == []


def test_a_config_change_reruns_only_the_stages_downstream(project: Path):
    run(project)
    assert run(project, "detect.flow.hidden=17") == ["b", "c"]
    assert written(project, "c").read_text() == "c(b(a(v1, hidden=128), hidden=17), hidden=17)"
    assert run(project, "detect.flow.hidden=17") == []


def test_a_changed_input_file_reruns_its_readers(project: Path):
    run(project)
    (project / "source.txt").write_text("v2 longer")
    assert run(project) == ["a", "b", "c", "d"]
    assert "v2 longer" in written(project, "c").read_text()


def test_a_deleted_output_reruns_its_stage(project: Path):
    run(project)
    shutil.rmtree(written(project, "b").parent)  # the stage's output directory
    # inputs are fingerprinted by content: b writes the same bytes again, so c's key is unchanged
    assert run(project) == ["b"]
    assert written(project, "b").read_text() == "b(a(v1, hidden=128), hidden=128)"


def test_from_forces_a_stage_and_everything_downstream(project: Path):
    run(project)
    assert run(project, start="b") == ["b", "c"]
    assert run(project, only="d") == ["d"]
    with pytest.raises(ConfigError, match="no stage called 'nope'"):
        run(project, start="nope")


def test_an_interrupted_stage_resumes_on_its_staging_copy_and_a_changed_one_starts_clean(project: Path):
    """A failed stage leaves its outputs as they were and its unfinished work in its staging copy,
    where a rerun with the same key resumes; a different key starts from an empty copy."""
    run(project)
    finished = written(project, "b").read_text()
    with pytest.raises(RuntimeError, match="b broke"):
        run(project, "detect.flow.hidden=9", fail={"b"})
    assert written(project, "b").read_text() == finished
    runs: list[str] = []
    seen = {}

    def stages_seeing_their_copy(config):
        stages = graph(runs)
        original = stages[1].action

        def check(config, log):
            seen["partial"] = toy_output(config, "b", "partial").exists()
            return original(config, log)

        stages[1] = Stage("b", check, ("detect.flow",), stages[1].inputs, stages[1].outputs, after=("a",))
        return stages

    config = load_config(root=project, sets=["detect.flow.hidden=9"])
    execute(config, select(stages_seeing_their_copy(config)), log=lambda _line: None)
    assert runs == ["b", "c"] and seen == {"partial": True}  # same key: resumed on what the failed run wrote
    assert written(project, "b").read_text() != finished
    with pytest.raises(RuntimeError, match="b broke"):
        run(project, "detect.flow.hidden=10", fail={"b"})
    runs.clear()
    config = load_config(root=project, sets=["detect.flow.hidden=11"])
    execute(config, select(stages_seeing_their_copy(config)), log=lambda _line: None)
    assert seen == {"partial": False}  # another key: a clean copy

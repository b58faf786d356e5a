"""Writes are durable (fsync of the file before the rename, of the directory after), and the stale
temporary files a killed writer leaves are removed by the next run of the stage that owns them."""

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fmb import io as fmb_io
from fmb.config import load_config
from fmb.run.engine import execute, select
from fmb.stage import Stage


def test_the_file_reaches_the_disk_before_its_name_and_the_name_after(tmp_path: Path, monkeypatch):
    # a power loss cannot be staged in a test: what is checked is that the kernel is asked, in order
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), real_replace(a, b)))
    target = tmp_path / "scores.json"

    fmb_io.write_json({"a": 1}, target)

    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"]
    assert Path(events[0][1]).name.startswith(".tmp-scores.json.")
    assert events[2][1] == str(tmp_path)
    assert target.read_text().strip().startswith("{") and not list(tmp_path.glob(".tmp-*"))


def dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def plant(directory: Path, name: str, age_s: float = 0) -> Path:
    path = directory / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"half a file")
    if age_s:
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return path


def test_only_temporaries_whose_writer_is_gone_are_removed(tmp_path: Path):
    host = fmb_io._host()
    out = tmp_path / "outputs"
    dead = plant(out, f".tmp-part-00003.parquet.{host}-{dead_pid()}.k2j3h4g5")
    live = plant(out, f".tmp-part-00004.parquet.{host}-{os.getpid()}.a1b2c3d4")
    elsewhere = plant(out, f".tmp-part-00005.parquet.othernode-{dead_pid()}.a1b2c3d4")
    old_elsewhere = plant(out / "sub", ".tmp-index.faiss.othernode-12.z9y8x7w6", age_s=fmb_io.STALE_AFTER_S + 60)
    old_unnamed = plant(out, ".tmp-part-00001.parquet.q1w2e3r4", age_s=fmb_io.STALE_AFTER_S + 60)
    users = plant(out, ".tmp-notes")  # not fmb's pattern: never touched
    beside = tmp_path / "totals.json"
    dead_beside = plant(tmp_path, f".tmp-totals.json.{host}-{dead_pid()}.m1n2b3v4")

    removed = fmb_io.remove_stale_temporaries([out, beside])

    assert set(removed) == {dead, old_elsewhere, old_unnamed, dead_beside}
    assert live.exists() and elsewhere.exists() and users.exists()


def test_the_next_run_of_the_owning_stage_sweeps_them(project: Path):
    """A resumed stage keeps what its killed run finished (in its staging copy: the engine removes
    nothing) but not its killed writes."""
    config = load_config(root=project)
    out = config.layout.cache("sweep")

    def killed(config, log):
        plant(config.layout.cache("sweep"), "piece-0.bin")  # a finished part, to resume on
        raise KeyboardInterrupt

    def stage(action):
        return Stage("sweep", action, (), lambda c: [], lambda c: [c.layout.cache("sweep")])

    with pytest.raises(KeyboardInterrupt):
        execute(config, select([stage(killed)]), log=lambda _line: None)
    assert not out.exists()  # a killed run never reaches the outputs
    staged = config.layout.staging("sweep").copy(out.relative_to(config.layout.root))
    stale = plant(staged, f".tmp-part-00001.parquet.{fmb_io._host()}-{dead_pid()}.abcdefgh")
    other_stage = plant(config.layout.cache("other"), f".tmp-x.{fmb_io._host()}-{dead_pid()}.abcdefgh")
    lines = []

    execute(config, select([stage(lambda c, log: {"ok": 1})]), log=lines.append)

    assert not stale.exists() and other_stage.exists() and (out / "piece-0.bin").exists()
    assert any("removed 1 temporary files a killed run left" in line for line in lines)


@pytest.mark.parametrize("name", ["a[1].json", "b*.json"])
def test_names_with_glob_characters_match_only_themselves(tmp_path: Path, name: str):
    mine = plant(tmp_path, f".tmp-{name}.{fmb_io._host()}-{dead_pid()}.abcdefgh")
    other = plant(tmp_path, f".tmp-a1.json.{fmb_io._host()}-{dead_pid()}.abcdefgh")
    assert fmb_io.remove_stale_temporaries([tmp_path / name]) == [mine] and other.exists()

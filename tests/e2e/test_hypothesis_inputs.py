"""Property tests where the space of inputs is large: hypothesis draws `--set` values, whole YAML task
files and damaged Parquet parts (truncated, bit-flipped), and each goes through the real entry point
(`fmb.cli.main`: `fmb status`, which resolves the whole configuration, and `fmb verify`) or the part reader every stage uses (`read_part`).
Whatever is drawn: never a traceback nor an "unexpected" error (exit 1), one line when refused, and
no file of the project changed or removed. 520 generated cases per run (250 + 120 + 150)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmb.config import load_config
from fmb.embed.store import read_part, write_embeddings
from fmb.errors import FmbError
from fmb.layout import RunLayout
from tests.conftest import fmb_main

SETTINGS = dict(deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
LEAF_KEYS = [key for key, _, _ in load_config(root=Path("/nonexistent-fmb-root"), remember=False).explain()]

#: pieces users type: numbers of every size, lists and mappings (closed or not), YAML tags, quotes
_FRAGMENTS = st.sampled_from(["[", "]", "{", "}", ",", ":", " ", "!!python/object:os.system", "!!binary", "&a", "*a",
                              "'", '"', "-", "1e9", "1e30", "-1", "0", "nan", ".inf", "~", "null", "true", "\n", "\t",
                              "\x00", "é", "../", "/etc/passwd", "pixels", "aion", "2**70"])
VALUES = st.one_of(
    st.text(max_size=40),
    st.lists(_FRAGMENTS, max_size=8).map("".join),
    st.integers().map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.recursive(st.one_of(st.integers(), st.text(max_size=8), st.floats(), st.booleans(), st.none()),
                 lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
                 max_leaves=6).map(lambda value: yaml.safe_dump(value, default_flow_style=True).strip()),
)
KEYS = st.one_of(st.sampled_from(LEAF_KEYS), st.sampled_from(LEAF_KEYS).map(lambda key: key.rsplit(".", 1)[0]),
                 st.text(alphabet="abcdefghijklmnopqrstuvwxyz._", min_size=1, max_size=20))


def tree(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*")) if path.is_file() and ".crash-logs" not in path.parts}


def refused_in_one_line(code: int, err: str) -> None:
    assert code in (0, 2), err  # 1 is an unexpected error: a bug
    assert "Traceback" not in err and "error: unexpected" not in err, err
    if code == 2 and err.startswith("error: "):  # fmb's refusal (a usage error is click's own box)
        assert len(err.strip().splitlines()) == 1, err


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """A project holding one run's file, which nothing drawn may change."""
    root = tmp_path_factory.mktemp("hypothesis")
    (root / "fmb.yaml").write_text("name: kept\n")
    report = RunLayout.of(root, "kept").report
    report.parent.mkdir(parents=True)
    report.write_text("<p>a finished output</p>")
    return root


@settings(max_examples=250, **SETTINGS)
@given(key=KEYS, value=VALUES)
def test_any_set_value_is_taken_or_refused_in_one_line(project: Path, monkeypatch, capsys, key: str, value: str):
    before = tree(project)
    code, err = fmb_main(project, monkeypatch, capsys, "status", "--set", f"{key}={value}")
    refused_in_one_line(code, err)
    assert tree(project) == before


_YAML_VALUES = st.recursive(
    st.one_of(st.integers(min_value=-(2**80), max_value=2**80), st.floats(), st.text(max_size=10), st.booleans(),
              st.none()),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(sorted({k.split(".")[-1] for k in LEAF_KEYS})),
                                                                inner, max_size=3),
    max_leaves=10)
TASK_FILES = st.tuples(
    st.dictionaries(st.sampled_from(sorted({k.split(".")[0] for k in LEAF_KEYS}) + ["x"]), _YAML_VALUES, max_size=4),
    st.one_of(st.none(), st.integers(min_value=0, max_value=400)),  # cut the text here
    st.text(max_size=6),  # then append this
).map(lambda drawn: (yaml.safe_dump(drawn[0]) if drawn[1] is None else yaml.safe_dump(drawn[0])[:drawn[1]] + drawn[2]))


@settings(max_examples=120, **SETTINGS)
@given(text=TASK_FILES)
def test_any_task_file_is_taken_or_refused_in_one_line(project: Path, monkeypatch, capsys, text: str):
    task = project / "task.yaml"
    task.write_text(text)
    before = tree(project)
    code, err = fmb_main(project, monkeypatch, capsys, "status", "--config", "task.yaml")
    refused_in_one_line(code, err)
    assert tree(project) == before


@pytest.fixture(scope="module")
def embedded(tmp_path_factory) -> Path:
    """A project whose run `parts` has finished embeddings of pixels (one part and its manifest)."""
    root = tmp_path_factory.mktemp("parts")
    (root / "fmb.yaml").write_text("name: parts\nrun: {models: [pixels]}\n")
    rng = np.random.default_rng(0)
    write_embeddings(RunLayout.of(root, "parts").embeddings("pixels").dir, {"model": "pixels"},
                     np.arange(64), {"image": rng.normal(size=(64, 8)).astype(np.float32),
                                     "spectrum": rng.normal(size=(64, 4)).astype(np.float32)})
    return root


DAMAGE = st.one_of(st.tuples(st.just("truncate"), st.floats(min_value=0, max_value=0.999)),
                   st.tuples(st.just("flip"), st.floats(min_value=0, max_value=0.999), st.integers(0, 7)))


@settings(max_examples=150, **SETTINGS)
@given(damage=DAMAGE)
def test_a_damaged_part_is_named_and_nothing_else_changes(embedded: Path, monkeypatch, capsys, damage):
    part = RunLayout.of(embedded, "parts").embeddings("pixels").part(0)
    original = part.read_bytes()
    damaged = bytearray(original)
    position = int(damage[1] * len(original))
    if damage[0] == "truncate":
        damaged = damaged[:position]
    else:
        damaged[position] ^= 1 << damage[2]
    part.write_bytes(bytes(damaged))
    try:
        before = tree(embedded)
        with pytest.raises(FmbError, match="part-00000.parquet"):  # the reader every stage uses
            read_part(part)
        code, err = fmb_main(embedded, monkeypatch, capsys, "verify", "--run", "parts")
        refused_in_one_line(code, err)
        assert code == 2 and "part-00000.parquet" in err and "fmb embed pixels" in err, err
        assert tree(embedded) == before
    finally:
        part.write_bytes(original)

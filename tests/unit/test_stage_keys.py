"""Stage keys change exactly when a stage's outputs could: the real stages' declared keys."""

import os
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fmb.config import load_config
from fmb.embed.extract import EMBED
from fmb.embed.store import embedded_models
from fmb.io import write_json
from fmb.models.tasks import ADAPT
from fmb.run.engine import changed_parts, fingerprint, key_parts, stage_key


def key(project: Path, stage, *sets: str) -> str:
    return stage_key(load_config(root=project, sets=list(sets)), stage)


def test_settings_that_cannot_change_results_leave_weights_and_embeddings_current(project: Path):
    embed, adapt = EMBED.for_model("pixels"), ADAPT.for_model("pixels")
    for stage in (embed, adapt):
        base = key(project, stage)
        for setting in ("models.pixels.embed.batch_size=7", "models.pixels.embed.num_workers=3",
                        "models.pixels.embed.prefetch=9", "models.pixels.device=cpu", "synth.workers=5"):
            assert key(project, stage, setting) == base, (stage.name, setting)
        assert key(project, stage, "models.pixels.components=12") != base
    # what only embedding reads does not invalidate the adapted weights
    assert key(project, adapt, "models.pixels.embed.rows_per_shard=100") == key(project, adapt)
    assert key(project, embed, "models.pixels.embed.rows_per_shard=100") != key(project, embed)


def test_the_key_holds_the_stage_version_and_the_fmb_version(project: Path):
    stage = EMBED.for_model("pixels")
    config = load_config(root=project)
    parts = key_parts(config, stage)
    from fmb import __version__

    assert __version__ in parts["version"]
    assert stage_key(config, replace(stage, version=stage.version + 1)) != stage_key(config, stage)


def test_parquet_inputs_are_fingerprinted_by_content_not_size_and_mtime(tmp_path: Path):
    path = tmp_path / "part.parquet"
    pq.write_table(pa.table({"x": [1, 2, 3]}), path)
    before, stat = fingerprint(path), path.stat()
    pq.write_table(pa.table({"x": [1, 2, 4]}), path)  # same size, other values
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and fingerprint(path) != before
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert fingerprint(path) == fingerprint(path)  # stable; and mtime alone does not change a footer
    manifest = tmp_path / "listing.json"
    write_json({"parts": {"0": {"sha256": "a"}}}, manifest)
    first = fingerprint(manifest)
    write_json({"parts": {"0": {"sha256": "b"}}}, manifest)
    assert fingerprint(manifest) != first


def test_a_changed_key_is_explained_by_the_dotted_config_key(project: Path):
    stage = EMBED.for_model("pixels")
    before = key_parts(load_config(root=project), stage)
    after = key_parts(load_config(root=project, sets=["models.pixels.components=12"]), stage)
    assert changed_parts(before, after) == ["config models.pixels.components 64 -> 12"]


def test_analysis_reads_the_models_of_the_run_not_every_directory_with_a_manifest(project: Path):
    config = load_config(root=project, sets=["run.models=[pixels]"])
    for model in ("pixels", "aion"):
        write_json({"parts": {}}, config.layout.embeddings(model).manifest)
    assert embedded_models(config) == ["pixels"]
    assert embedded_models(load_config(root=project, sets=["run.models=[aion,pixels]"])) == ["aion", "pixels"]

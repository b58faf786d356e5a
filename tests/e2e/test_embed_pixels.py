"""Adapt + embed through the real pipeline with the pixel-PCA reference (fast, no weights needed)."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from fmb.config import load_config
from fmb.data.tasks import index
from fmb.embed import store
from fmb.embed.extract import embed
from fmb.embed.legacy import import_embeddings
from fmb.errors import FmbError
from fmb.layout import EmbeddingFiles
from fmb.models import tasks as model_tasks
from tests.conftest import tagged_row, write_rows

SETTINGS = [
    "data.source=survey",
    "models.pixels.components=6",
    "models.pixels.image_size=8",
    "models.pixels.embed.rows_per_shard=7",
    "models.pixels.embed.batch_size=3",
    "models.pixels.embed.num_workers=0",
]


def make_survey(project: Path, n: int = 40, broken=True) -> None:
    rows = [tagged_row(1000 + i, size=32, seed=i) for i in range(n)]
    if broken:
        rows[4]["spectrum"] = None  # usable for nothing that needs a spectrum
        rows[9]["NISP_H_image"] = rows[9]["NISP_H_image"][:20]
    write_rows(project / "survey" / "part-0.parquet", rows[: n // 2], row_group_size=5)
    write_rows(project / "survey" / "part-1.parquet", rows[n // 2 :], row_group_size=5)


@pytest.fixture
def fitted(project: Path):
    make_survey(project)
    config = load_config(root=project, sets=SETTINGS)
    index(config)
    model_tasks.adapt(config, "pixels")
    return config


def test_unfitted_reference_is_a_clear_error(project: Path):
    make_survey(project)
    config = load_config(root=project, sets=SETTINGS)
    index(config)
    with pytest.raises(FmbError, match="run `fmb adapt pixels` first"):
        embed(config, "pixels")


def test_embed_writes_parts_manifest_and_records_skips(fitted):
    summary = embed(fitted, "pixels")
    files = fitted.layout.embeddings("pixels")
    directory = files.dir
    assert summary["units"] == 6 and summary["objects"] == 38
    ids, matrices = store.load_embeddings(directory)
    assert sorted(ids) == sorted(set(range(1000, 1040)) - {1004, 1009})
    assert matrices["image"].shape == (38, 6) and matrices["joint"].shape == (38, 12)
    same_ids, same, residuals = store.load_embeddings_and_residuals(directory)
    np.testing.assert_array_equal(same_ids, ids)
    np.testing.assert_array_equal(same["image"], matrices["image"])
    assert set(residuals) == {"image", "spectrum"}  # the reference's own noise-weighted chi^2, one per object
    assert all(r.shape == (38,) and np.isfinite(r).all() and (r >= 0).all() for r in residuals.values())
    manifest = json.loads(files.manifest.read_text())
    assert manifest["signature"]["model"] == "pixels" and len(manifest["signature"]["weights_sha256"]) == 64
    assert all(len(entry["sha256"]) == 64 for entry in manifest["parts"].values())
    rejects = pq.read_table(fitted.layout.data.rejects).to_pandas()
    mine = rejects[rejects.stage == "embed:pixels"]
    assert set(mine.object_id) == {1004, 1009} and set(mine.location) == {"part-0.parquet:4", "part-0.parquet:9"}


def test_embeddings_are_deterministic_and_worker_count_does_not_matter(fitted, project: Path):
    embed(fitted, "pixels")
    ids_a, a = store.load_embeddings(fitted.layout.embeddings("pixels").dir)
    other = load_config(root=project, sets=SETTINGS + ["name=other", "models.pixels.embed.num_workers=2"])
    other.layout.data.dir.mkdir(parents=True)
    for source, target in ((fitted.layout.data.index, other.layout.data.index),
                           (fitted.layout.data.index_meta, other.layout.data.index_meta)):
        target.write_bytes(source.read_bytes())
    other.layout.models_dir.mkdir()
    os.symlink(fitted.layout.model("pixels").dir, other.layout.model("pixels").dir)
    embed(other, "pixels")
    ids_b, b = store.load_embeddings(other.layout.embeddings("pixels").dir)
    np.testing.assert_array_equal(ids_a, ids_b)
    for modality in a:
        np.testing.assert_array_equal(a[modality], b[modality])


class Interrupted(Exception):
    pass


@pytest.mark.parametrize("where", ["after_part_before_manifest", "after_manifest"])
def test_interrupted_then_resumed_equals_uninterrupted(fitted, project: Path, monkeypatch, where):
    embed(fitted, "pixels")
    ids_ref, ref = store.load_embeddings(fitted.layout.embeddings("pixels").dir)

    resumed = load_config(root=project, sets=SETTINGS + ["name=resumed"])
    index(resumed)
    resumed.layout.models_dir.mkdir()
    os.symlink(fitted.layout.model("pixels").dir, resumed.layout.model("pixels").dir)
    calls = {"n": 0}
    original_add = store.Manifest.add

    def failing_add(self, unit_id, rows, skipped):  # a crash at a chosen point of the third unit
        calls["n"] += 1
        if calls["n"] == 3 and where == "after_part_before_manifest":
            raise Interrupted
        original_add(self, unit_id, rows, skipped)
        if calls["n"] == 3:
            raise Interrupted

    monkeypatch.setattr(store.Manifest, "add", failing_add)
    with pytest.raises(Interrupted):
        embed(resumed, "pixels")
    monkeypatch.setattr(store.Manifest, "add", original_add)
    summary = embed(resumed, "pixels")
    assert summary["units_done_now"] == (4 if where == "after_part_before_manifest" else 3)
    ids, got = store.load_embeddings(resumed.layout.embeddings("pixels").dir)
    assert len(ids) == len(set(ids)) == len(ids_ref)
    np.testing.assert_array_equal(ids, ids_ref)
    for modality in ref:
        np.testing.assert_array_equal(got[modality], ref[modality])


def test_an_object_the_model_overflows_on_is_skipped_not_stored(fitted, project: Path):
    """3e38 is a finite float32 the checker lets through; the reference's preprocessing overflows on it."""
    rows = [tagged_row(1000 + i, size=32, seed=i) for i in range(20)]
    rows[3]["VIS_image"][5, 5] = 3e38
    write_rows(project / "survey" / "part-0.parquet", rows, row_group_size=5)
    index(fitted)  # the data changed: indexed again, and embedded from scratch
    embed(fitted, "pixels")
    ids, matrices = store.load_embeddings(fitted.layout.embeddings("pixels").dir)
    assert 1003 not in ids and 1004 in ids
    assert all(np.isfinite(m).all() for m in matrices.values())
    rejects = pq.read_table(fitted.layout.data.rejects).to_pandas()
    reason = rejects[(rejects.object_id == 1003) & (rejects.field == "embedding")].reason.tolist()
    assert reason and reason[0].startswith("pixels gave NaN/inf in ")


def test_changed_weights_refuse_to_mix_with_old_parts(fitted, project: Path):
    embed(fitted, "pixels")
    changed = load_config(root=project, sets=SETTINGS + ["models.pixels.embed.rows_per_shard=9"])
    with pytest.raises(FmbError, match="rows_per_shard changed"):
        embed(changed, "pixels")


def test_pt_export_import_round_trip(fitted, project: Path):
    embed(fitted, "pixels")
    directory = fitted.layout.embeddings("pixels").dir
    path = project / "legacy.pt"
    assert store.export_pt(directory, path) == 38
    records = torch.load(path, weights_only=False)
    assert set(records[0]) == {"object_id", "embedding_images", "embedding_spectra", "embedding_joint"}
    assert import_embeddings(path, project / "imported", {"model": "pixels"}) == 38
    ids_a, a = store.load_embeddings(directory)
    ids_b, b = store.load_embeddings(project / "imported")
    np.testing.assert_array_equal(ids_a, ids_b)
    np.testing.assert_array_equal(a["joint"], b["joint"])


def test_import_of_aion_style_keys_and_bad_files(tmp_path: Path):
    good = [{"object_id": i, "embedding_hsc": torch.ones(4) * i, "embedding_hsc_desi": torch.zeros(4)} for i in range(3)]
    torch.save(good, tmp_path / "aion.pt")
    assert import_embeddings(tmp_path / "aion.pt", tmp_path / "out", {"model": "aion"}) == 3
    ids, m = store.load_embeddings(tmp_path / "out")
    assert set(m) == {"image", "joint"} and m["image"][2, 0] == 2
    torch.save(good + [{"object_id": 1, "embedding_hsc": torch.ones(4), "embedding_hsc_desi": torch.ones(4)}], tmp_path / "dup.pt")
    with pytest.raises(FmbError, match="object id 1 appears 2 times"):
        import_embeddings(tmp_path / "dup.pt", tmp_path / "out2", {"model": "aion"})


def test_reference_separates_an_odd_object(project: Path):
    """The fitted PCA is real: an object unlike the rest lands far from the crowd."""
    rows = [tagged_row(2000 + i, size=32, seed=i) for i in range(60)]
    for row in rows:  # the tag makes every image a flat field: give most a common texture
        row["VIS_image"] = row["VIS_image"] + np.sin(np.arange(32) / 3.0)[None, :].astype(np.float32)
    rows[7]["VIS_image"] = rows[7]["VIS_image"] + 40 * np.cos(np.arange(32) / 1.5)[:, None].astype(np.float32)
    write_rows(project / "survey" / "part-0.parquet", rows)
    config = load_config(root=project, sets=SETTINGS)
    index(config)
    model_tasks.adapt(config, "pixels")
    embed(config, "pixels")
    ids, m = store.load_embeddings(config.layout.embeddings("pixels").dir)
    distance = np.linalg.norm(m["image"] - np.median(m["image"], axis=0), axis=1)
    assert ids[np.argmax(distance)] == 2007


def kill_embed_mid_run(project: Path):
    """A real SIGKILL of `fmb embed` (the CLI, not a simulated exception) after a few parts;
    returns the command runner and the run's arguments."""
    make_survey(project, n=600, broken=False)
    sets = [s for s in SETTINGS if "rows_per_shard" not in s] + ["models.pixels.embed.rows_per_shard=20"]
    args = [arg for s in sets for arg in ("--set", s)]
    cli = [sys.executable, "-c", "from fmb.cli import main; main()"]
    run = lambda *a: subprocess.run(cli + list(a), cwd=project, capture_output=True, text=True)
    for step in (("data", "index"), ("adapt", "pixels")):
        assert run(*step, *args).returncode == 0
    process = subprocess.Popen(cli + ["embed", "pixels", *args], cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    layout = load_config(root=project, sets=sets).layout
    files = layout.embeddings("pixels")
    # the stage writes into its staging copy (fmb.run.staging); the embeddings appear when it finishes
    staged = EmbeddingFiles(layout.staging("embed:pixels").copy(files.dir.relative_to(layout.root)))
    deadline = time.time() + 120
    while time.time() < deadline and len(staged.unit_records()) < 3:
        time.sleep(0.02)
    assert process.poll() is None, "the run finished before it could be killed; make the survey larger"
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert 3 <= len(staged.unit_records()) < 30 and not staged.manifest.is_file()  # incomplete: no manifest yet
    assert not files.dir.exists()  # nothing half-made where the embeddings belong
    return run, args, files, staged


def test_real_kill_9_then_resume_loses_and_duplicates_nothing(project: Path):
    run, args, embeddings, _ = kill_embed_mid_run(project)
    assert run("embed", "pixels", *args).returncode == 0
    ids, _ = store.load_embeddings(embeddings.dir)
    assert len(ids) == 600 and len(set(ids)) == 600


def test_data_changed_between_kill_and_resume_is_refused_not_mixed(project: Path):
    run, args, embeddings, staged = kill_embed_mid_run(project)
    before = {path.name: path.read_text() for path in staged.unit_records()}
    started_on = json.loads(staged.signature.read_text())["data_sha256"]
    rows = [tagged_row(1000 + i, size=32, seed=1000 + i) for i in range(300, 600)]  # same ids, other pixels
    write_rows(project / "survey" / "part-1.parquet", rows, row_group_size=5)

    resumed = run("embed", "pixels", *args)

    assert resumed.returncode == 2
    message = resumed.stderr.strip()
    assert "changed since it was indexed" in message and "fmb data index" in message
    assert "Traceback" not in resumed.stderr and len(message.splitlines()) == 1
    assert {path.name: path.read_text() for path in staged.unit_records()} == before  # nothing added

    assert run("data", "index", *args).returncode == 0  # indexed again: the embeddings start over
    assert run("embed", "pixels", *args).returncode == 0
    ids, _ = store.load_embeddings(embeddings.dir)
    assert len(ids) == len(set(ids)) == 600
    assert json.loads(embeddings.manifest.read_text())["signature"]["data_sha256"] != started_on


def test_a_stale_index_is_refused_row_by_row(fitted, project: Path):
    """Rows read by index position must carry the indexed id (the second line of defence, for
    sources whose fingerprint cannot see the change)."""
    from fmb.data.index import read_index_table
    from fmb.data.loader import BatchStream, plan_units
    from fmb.data.sources import open_source
    from fmb.errors import DataError
    from fmb.models.pixels import PixelsPreprocessor

    units = plan_units(read_index_table(fitted.layout.data.dir), 7)
    shuffled = dataclasses.replace(units[1], object_ids=units[1].object_ids[::-1])
    stream = BatchStream(open_source(fitted), [shuffled], PixelsPreprocessor(8), 3, fitted.data)
    with pytest.raises(DataError, match=r"index is stale: part-0.parquet:7 now holds object 1007"):
        list(stream)


def test_workers_embedding_different_units_at_once_lose_nothing(fitted, project: Path):
    """Two processes, each given half the units (as two array tasks would be), run at the same time:
    each unit keeps its own record, and whichever finishes last writes the complete manifest."""
    code = ("import sys; from fmb.config import load_config; from fmb.embed.extract import embed; "
            "config = load_config(sets=sys.argv[2:]); "
            "embed(config, 'pixels', unit_filter=lambda unit: unit % 2 == int(sys.argv[1]))")
    workers = [subprocess.Popen([sys.executable, "-c", code, str(half), *SETTINGS], cwd=project) for half in (0, 1)]
    assert [worker.wait(timeout=300) for worker in workers] == [0, 0]
    files = fitted.layout.embeddings("pixels")
    assert len(files.unit_records()) == 6 and files.manifest.is_file()
    assert len(json.loads(files.manifest.read_text())["parts"]) == 6
    ids, _ = store.load_embeddings(files.dir)
    assert len(ids) == len(set(ids)) == 38 and embed(fitted, "pixels")["units_done_now"] == 0


def test_sharded_over_two_local_processes_equals_one_process(fitted, project: Path):
    """`executor.workers=2`: the engine runs embed:pixels as two shards in two processes, then merges;
    the result is the single-process one, object for object."""
    from fmb.run import run_one
    from fmb.run.stages import stage_named

    embed(fitted, "pixels")
    ids_ref, ref = store.load_embeddings(fitted.layout.embeddings("pixels").dir)
    sharded = load_config(root=project, sets=SETTINGS + ["name=sharded", "executor.workers=2"])
    index(sharded)
    sharded.layout.models_dir.mkdir()
    os.symlink(fitted.layout.model("pixels").dir, sharded.layout.model("pixels").dir)
    lines = []
    run_one(sharded, stage_named(sharded, "embed:pixels"), lines.append)
    assert any("2 shards (0 done before), 2 to run on local" in line for line in lines)
    statuses = [json.loads(p.read_text()) for p in sharded.layout.shards("embed:pixels").statuses()]
    assert [s["status"] for s in statuses] == ["done", "done"]
    assert sum(s["result"]["units_done_now"] for s in statuses) == 6
    ids, got = store.load_embeddings(sharded.layout.embeddings("pixels").dir)
    np.testing.assert_array_equal(ids, ids_ref)
    for modality in ref:
        np.testing.assert_array_equal(got[modality], ref[modality])

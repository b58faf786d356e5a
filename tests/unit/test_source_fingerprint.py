"""One reading of `data.source`, and content fingerprints of every kind of source (stage cache keys)."""

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import specutils
from astropy.io import fits

from fmb.config import load_config
from fmb.data.index import INDEX_SCHEMA, IndexResult, build_index, save_index
from fmb.data.schema import RGB_COLUMN, rows_to_table
from fmb.data.sources import ParquetSource, SourceSpec, local_inputs, open_source, parse_source
from fmb.errors import ConfigError
from fmb.io import write_table
from fmb.layout import DataFiles
from tests.conftest import tagged_row

DESI_FILES = Path(specutils.__file__).parent / "io/default_loaders/tests/desi_test_data"
REVISION = "0123456789abcdef0123456789abcdef01234567"


# -- parse_source ----------------------------------------------------------------------------------
@pytest.mark.parametrize("spec, kind, location", [
    ("data/synth", "parquet", "data/synth"),
    ("/abs/survey", "parquet", "/abs/survey"),
    ("hf:msiudek/astroPT_euclid_Q1_desi_dr1_dataset", "hf", "msiudek/astroPT_euclid_Q1_desi_dr1_dataset"),
    ("hf:local/dataset_dir", "hf", "local/dataset_dir"),
    ("desi:coadds", "desi", "coadds"),
    ("xyz:survey", "parquet", "xyz:survey"),  # only hf: and desi: are prefixes
    ("surveys/a:b", "parquet", "surveys/a:b"),
])
def test_parse_source_reads_every_form(spec, kind, location):
    assert parse_source(spec) == SourceSpec(kind, location)


@pytest.mark.parametrize("spec", ["", "hf:", "desi:"])
def test_parse_source_rejects_a_source_naming_nothing(spec):
    with pytest.raises(ConfigError, match="data.source"):
        parse_source(spec)


def test_a_colon_in_a_parquet_directory_name_is_a_parquet_source(project: Path):
    _write_part(project / "xyz:survey" / "part-0.parquet", seed=0)
    config = load_config(root=project, sets=["data.source=xyz:survey"])
    source = open_source(config)
    assert isinstance(source, ParquetSource) and source.shards() == ["part-0.parquet"]
    assert local_inputs(config) == [project / "xyz:survey"]


def test_local_inputs_of_each_kind(project: Path):
    (project / "coadds").mkdir()
    (project / "cutouts").mkdir()
    (project / "hub_copy").mkdir()

    def inputs(*sets):
        return local_inputs(load_config(root=project, sets=list(sets)))

    assert inputs("data.source=data/synth") == [project / "data/synth"]  # a Parquet dir even before synth
    assert inputs("data.source=hf:owner/name") == []  # a hub id: its revision is in the fingerprint
    assert inputs("data.source=hf:hub_copy") == [project / "hub_copy"]
    assert inputs("data.source=desi:coadds", "data.cutouts=cutouts") == [project / "coadds", project / "cutouts"]


# -- Parquet ---------------------------------------------------------------------------------------
def _write_part(path: Path, seed: int) -> Path:
    """Uncompressed, plain-encoded, fixed-width: a rewrite with other values has exactly the same size."""
    table = rows_to_table([tagged_row(i, seed=seed) for i in range(5)]).drop_columns([RGB_COLUMN])  # PNG bytes vary
    return write_table(table, path, compression="none", use_dictionary=False)


def test_parquet_fingerprint_follows_content_not_size_or_mtime(tmp_path: Path):
    part = _write_part(tmp_path / "survey" / "part-0.parquet", seed=0)
    _write_part(tmp_path / "survey" / "sub" / "part-1.parquet", seed=0)
    source = ParquetSource(tmp_path / "survey")
    before = source.fingerprint()
    assert set(before["files"]) == {"part-0.parquet", "sub/part-1.parquet"}
    json.dumps(before)

    os.utime(part, ns=(1_000_000_000, 1_000_000_000))  # touched only: the same data
    assert source.fingerprint() == before

    stat = part.stat()
    _write_part(part, seed=1)  # other pixel values, same size, mtime put back
    os.utime(part, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert part.stat().st_size == stat.st_size and part.stat().st_mtime_ns == stat.st_mtime_ns
    after = source.fingerprint()
    assert after["files"]["part-0.parquet"] != before["files"]["part-0.parquet"]
    assert after["files"]["sub/part-1.parquet"] == before["files"]["sub/part-1.parquet"]


def test_unreadable_parquet_file_is_fingerprinted_by_size_and_mtime(tmp_path: Path):
    bad = tmp_path / "survey" / "part-bad.parquet"
    bad.parent.mkdir()
    bad.write_bytes(b"not parquet at all")
    source = ParquetSource(tmp_path / "survey")
    before = source.fingerprint()
    assert list(before["files"]) == ["part-bad.parquet"]
    os.utime(bad, ns=(2_000_000_000, 2_000_000_000))
    assert source.fingerprint() != before


def test_index_json_records_the_source_fingerprint(tmp_path: Path):
    _write_part(tmp_path / "survey" / "part-0.parquet", seed=0)
    source = ParquetSource(tmp_path / "survey")
    save_index(build_index(source), tmp_path / "out", source)
    meta = json.loads(DataFiles(tmp_path / "out").index_meta.read_text())
    assert meta["revision"] is None and len(meta["fingerprint"]) == 64 and meta["objects"] == 5
    _write_part(tmp_path / "survey" / "part-0.parquet", seed=1)
    save_index(build_index(source), tmp_path / "out", source)
    assert json.loads(DataFiles(tmp_path / "out").index_meta.read_text())["fingerprint"] != meta["fingerprint"]


# -- Hugging Face ----------------------------------------------------------------------------------
def _plant_hf_dataset(hf_home: Path, repo_id: str, revision: str) -> Path:
    """A hub dataset in the cache as `huggingface_hub` lays it out (cf. `plant_hf_file` for models)."""
    repo = hf_home / "hub" / ("datasets--" + repo_id.replace("/", "--"))
    (repo / "snapshots" / revision / "data").mkdir(parents=True)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(revision)
    return repo


def test_hf_fingerprint_reports_the_revision_in_the_hub_cache(project: Path, offline_hub: Path):
    _plant_hf_dataset(offline_hub, "owner/cached", REVISION)
    config = load_config(root=project, sets=["data.source=hf:owner/cached", "data.splits=[train]"])
    source = open_source(config)
    identity = source.fingerprint()
    assert identity == {"kind": "hf", "dataset": "owner/cached", "splits": ["train"], "streaming": False,
                        "revision": REVISION}
    assert source.revision() == REVISION

    save_index(IndexResult(INDEX_SCHEMA.empty_table(), [], {}), project / "out", source)
    assert json.loads(DataFiles(project / "out").index_meta.read_text())["revision"] == REVISION


def test_hf_fingerprint_of_an_uncached_hub_id_says_so(project: Path, offline_hub: Path):
    source = open_source(load_config(root=project), "hf:owner/not_cached")
    identity = source.fingerprint()
    assert identity["revision"] is None and "hub cache" in identity["note"]


def test_hf_fingerprint_of_a_local_dataset_dir_follows_its_files(project: Path, offline_hub: Path):
    part = _write_part(project / "hub_copy" / "data" / "train-00000-of-00001.parquet", seed=0)
    source = open_source(load_config(root=project, sets=["data.source=hf:hub_copy"]))
    before = source.fingerprint()
    assert before["revision"] is None and list(before["files"]) == ["data/train-00000-of-00001.parquet"]
    _write_part(part, seed=1)
    assert source.fingerprint() != before


# -- DESI ------------------------------------------------------------------------------------------
def test_desi_fingerprint_changes_when_a_header_changes(project: Path):
    (project / "coadds").mkdir()
    coadd = Path(shutil.copy(DESI_FILES / "coadd-sv3-dark-26065.fits", project / "coadds"))
    (project / "cutouts").mkdir()
    cutout = project / "cutouts" / "39627866878511337.fits"
    bands = ("VIS", "NISP_Y", "NISP_J", "NISP_H")
    hdus = [fits.PrimaryHDU()] + [fits.ImageHDU(np.zeros((8, 8), "f4"), name=band) for band in bands]
    fits.HDUList(hdus).writeto(cutout)
    source = open_source(load_config(root=project, sets=["data.source=desi:coadds", "data.cutouts=cutouts"]))
    before = source.fingerprint()
    assert set(before["coadds"]) == {coadd.name} and set(before["cutouts"]) == {cutout.name}
    assert source.fingerprint() == before

    size = coadd.stat().st_size
    fits.setval(coadd, "FMBNOTE", value="edited", ext=0)  # fits in the header's padding: same size
    assert coadd.stat().st_size == size
    after = source.fingerprint()
    assert after["coadds"] != before["coadds"] and after["cutouts"] == before["cutouts"]

    fits.setval(cutout, "BUNIT", value="ADU", ext=1)
    assert source.fingerprint()["cutouts"] != after["cutouts"]

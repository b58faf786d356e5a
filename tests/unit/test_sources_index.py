"""Parquet source, index and fetcher: ids only at index time, rows by id, no mis-pairing."""

from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fmb.config import load_config
from fmb.data.index import Fetcher, ObjectIndex, build_index, save_index
from fmb.data.scan import iter_samples, write_rejects
from fmb.data.sources import ParquetSource, open_source
from fmb.data.validate import SKIPPED, RowChecker
from fmb.errors import ConfigError, DataError
from fmb.io import write_table
from fmb.layout import SurveyLayout
from tests.conftest import row_tag, tagged_row, write_rows


@pytest.fixture
def survey(project: Path) -> Path:
    data = project / "data"
    write_rows(data / "part-0.parquet", [tagged_row(i) for i in range(100, 110)])
    write_rows(data / "sub" / "part-1.parquet", [tagged_row(i) for i in range(200, 207)])
    import pyarrow as pa

    write_table(pa.table({"TARGETID": [100], "Z": [0.1]}), SurveyLayout(data).catalog)
    write_table(pa.table({"object_id": [100], "anomaly_class": ["none"]}), SurveyLayout(data).truth)
    return data


def test_index_maps_every_id_and_ignores_catalog_and_truth(survey: Path):
    source = ParquetSource(survey)
    assert source.shards() == ["part-0.parquet", "sub/part-1.parquet"]
    result = build_index(source)
    assert result.issues == []
    table = result.table.to_pandas().set_index("object_id")
    assert len(table) == 17
    assert tuple(table.loc[204, ["shard", "row"]]) == ("sub/part-1.parquet", 4)
    assert table[["ra", "dec"]].isna().all().all()  # these rows carry no sky position


def test_index_reads_only_the_id_and_position_columns(survey: Path, monkeypatch):
    requested = []
    original = pq.ParquetFile.read

    def spy(self, columns=None, **kwargs):  # records what the real reader is asked for
        requested.append(columns)
        return original(self, columns=columns, **kwargs)

    monkeypatch.setattr(pq.ParquetFile, "read", spy)
    build_index(ParquetSource(survey))
    allowed = {"object_id", "targetid", "ra", "dec", "target_ra", "target_dec"}  # never a cutout or spectrum
    assert requested and all({column.lower() for column in columns} <= allowed for columns in requested)


def test_fetcher_returns_the_right_rows_in_request_order(survey: Path):
    source = ParquetSource(survey)
    index = ObjectIndex(build_index(source).table)
    fetcher = Fetcher(source, index)
    wanted = [205, 101, 109, 200, 103]
    rows = fetcher.rows(wanted)
    assert [row["object_id"] for row in rows] == wanted
    for object_id, row in zip(wanted, rows):
        sample, _ = RowChecker().check(row)
        assert row_tag(sample) == (object_id % 1000, object_id % 1000)
        np.testing.assert_allclose(sample.bands, tagged_row(object_id)["VIS_image"][None].repeat(4, 0), atol=0.1)


def test_unknown_id_is_a_clear_error(survey: Path):
    source = ParquetSource(survey)
    fetcher = Fetcher(source, ObjectIndex(build_index(source).table))
    with pytest.raises(DataError, match="object 999: not in the index"):
        fetcher.rows([999])


def test_stale_index_is_detected_not_misread(survey: Path):
    source = ParquetSource(survey)
    index = ObjectIndex(build_index(source).table)
    write_rows(survey / "part-0.parquet", [tagged_row(i) for i in range(300, 310)])  # rewritten after indexing
    with pytest.raises(DataError, match="index is stale"):
        Fetcher(source, index).rows([105])


def test_duplicate_ids_keep_the_first_and_record_the_rest(survey: Path):
    write_rows(survey / "part-2.parquet", [tagged_row(104, seed=9), tagged_row(500)])
    result = build_index(ParquetSource(survey))
    (issue,) = result.issues
    assert (issue.object_id, issue.field, issue.action) == (104, "object_id", SKIPPED)
    assert "part-0.parquet:4 is used" in issue.reason and issue.location == "part-2.parquet:0"
    assert result.table.num_rows == 18


def test_unreadable_shard_is_recorded_and_the_rest_indexed(survey: Path):
    (survey / "broken.parquet").write_bytes(b"PAR1 this is not parquet")
    source = ParquetSource(survey)
    result = build_index(source)
    assert result.table.num_rows == 17
    (issue,) = result.issues
    assert issue.field == "file" and "broken.parquet" in issue.reason and issue.action == SKIPPED
    issues: list = []
    samples = list(iter_samples(source, RowChecker(), issues))
    assert len(samples) == 17 and [i.field for i in issues] == ["file"]


def test_rows_without_id_are_recorded(survey: Path):
    rows = [tagged_row(600), tagged_row(601)]
    rows[1]["object_id"] = rows[1]["targetid"] = None
    write_rows(survey / "part-3.parquet", rows)
    result = build_index(ParquetSource(survey))
    assert [(i.field, i.location) for i in result.issues] == [("object_id", "part-3.parquet:1")]


def test_uint64_ids_beyond_int64_are_refused_never_wrapped(survey: Path):
    """A uint64 id of 2**63 + 5 would wrap to a negative int64 — another object's id, possibly."""
    import pyarrow as pa

    table = pa.table({"object_id": pa.array([700, 2**63 + 5], pa.uint64()), "targetid": pa.array([700, 701], pa.int64()),
                      "spectrum": pa.array([None, None], pa.struct([("flux", pa.list_(pa.float32()))]))})
    write_table(table, survey / "part-3.parquet")
    result = build_index(ParquetSource(survey))
    indexed = set(result.table.column("object_id").to_pylist())
    assert 700 in indexed and 701 not in indexed and not any(i < 0 for i in indexed)
    assert [(i.field, i.reason, i.location) for i in result.issues] == [
        ("object_id", "missing, or not an int64 id", "part-3.parquet:1")]


def test_full_pass_never_mispairs_image_and_spectrum(survey: Path):
    rows = [tagged_row(700 + i) for i in range(30)]
    rows[3]["spectrum"] = None  # objects with a modality missing must not shift their neighbours
    rows[11]["VIS_image"] = None
    rows[17]["spectrum"]["flux"] = rows[17]["spectrum"]["flux"][:100]
    write_rows(survey / "part-4.parquet", rows, row_group_size=7)
    issues: list = []
    samples = list(iter_samples(ParquetSource(survey), RowChecker(), issues, batch_size=4))
    assert len(samples) == 47
    for sample in samples:
        image_tag = round(float(sample.bands.mean())) if sample.bands is not None else None
        spectrum_tag = round(float(np.median(sample.spectrum.flux))) if sample.spectrum is not None else None
        assert {image_tag, spectrum_tag} - {None} == {sample.object_id % 1000}
    assert {i.location for i in issues} == {"part-4.parquet:3", "part-4.parquet:11", "part-4.parquet:17"}


def test_rejects_table_replaces_only_its_own_stage(survey: Path, project: Path):
    (survey / "broken.parquet").write_bytes(b"junk")
    path = load_config(root=project).layout.data.rejects
    write_rejects(path, "index", build_index(ParquetSource(survey)).issues)
    write_rejects(path, "validate", [])
    write_rejects(path, "validate", build_index(ParquetSource(survey)).issues)
    stages = pq.read_table(path).column("stage").to_pylist()
    assert stages == ["index", "validate"]


def test_open_source_resolves_under_the_root_and_reports_missing_dirs(survey: Path, project: Path):
    config = load_config(root=project, sets=["data.source=data"])
    assert open_source(config).directory == survey
    with pytest.raises(ConfigError, match="not a directory"):
        open_source(load_config(root=project, sets=["data.source=nowhere"]))
    with pytest.raises(ConfigError, match="data.cutouts"):
        open_source(load_config(root=project, sets=["data.source=desi:x"]))


def test_saved_index_round_trips(survey: Path, project: Path):
    source = ParquetSource(survey)
    save_index(build_index(source), project / "out", source)
    index = ObjectIndex.load(project / "out")
    assert len(index) == 17 and index.locate([102]) == [("part-0.parquet", 2)]

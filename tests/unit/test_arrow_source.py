"""The Arrow cache source: `datasets` save_to_disk folders read through `load_from_disk`, served and
checked exactly as the Parquet and Hugging Face routes serve the same rows."""

import dataclasses
from pathlib import Path

import datasets
import numpy as np
import pytest

from fmb.config import load_config
from fmb.data.index import Fetcher, ObjectIndex, build_index
from fmb.data.scan import iter_samples
from fmb.data.schema import rows_to_table
from fmb.data.sources import open_source
from fmb.data.sources.arrow import ArrowSource
from fmb.data.tasks import index, open_fetcher, validate
from fmb.data.validate import DROPPED, RowChecker
from fmb.errors import ConfigError, DataError
from tests.conftest import tagged_row, write_rows

TRAIN, TEST = range(300, 306), range(400, 403)


def rows(ids) -> list[dict]:
    return [tagged_row(i, size=20 + i % 3, seed=1) for i in ids]  # cutout sizes vary, as in real data


def save(directory: Path, splits: dict[str, list[dict]]) -> Path:
    datasets.DatasetDict({name: datasets.Dataset(rows_to_table(r)) for name, r in splits.items()}).save_to_disk(
        str(directory))
    return directory


def samples_by_id(source) -> dict:
    issues: list = []
    found = {s.object_id: s for s in iter_samples(source, RowChecker(), issues, batch_size=4)}
    assert issues == []
    return found


def assert_same_sample(a, b) -> None:
    for field in dataclasses.fields(a):
        x, y = getattr(a, field.name), getattr(b, field.name)
        if dataclasses.is_dataclass(x):
            assert_same_sample(x, y)
        elif isinstance(x, np.ndarray):
            np.testing.assert_array_equal(x, y, err_msg=field.name)
        else:
            assert x == y or (x != x and y != y), field.name  # NaN (an unknown value) equals NaN


def test_arrow_cache_serves_the_parquet_and_hf_objects_object_for_object(project: Path, offline_hub):
    train, test = rows(TRAIN), rows(TEST)
    save(project / "arrow_cache", {"train": train, "test": test})
    write_rows(project / "parquet" / "part-0.parquet", train + test)
    write_rows(project / "hub_copy" / "data" / "train-00000-of-00001.parquet", train)
    write_rows(project / "hub_copy" / "data" / "test-00000-of-00001.parquet", test)
    config = load_config(root=project, sets=["data.source=arrow_cache"])  # a plain folder: recognised
    arrow = open_source(config)
    assert isinstance(arrow, ArrowSource) and isinstance(open_source(config, "arrow:arrow_cache"), ArrowSource)
    assert arrow.shards() == ["test", "train"]
    by_route = {"arrow": samples_by_id(arrow), "parquet": samples_by_id(open_source(config, "parquet")),
                "hf": samples_by_id(open_source(config, "hf:hub_copy"))}
    assert sorted(by_route["arrow"]) == [*TRAIN, *TEST]
    for route in ("parquet", "hf"):
        assert by_route[route].keys() == by_route["arrow"].keys()
        for object_id, sample in by_route["arrow"].items():
            assert_same_sample(sample, by_route[route][object_id])
    # indexed (ids only) and fetched by id through the run's index, as every stage reads
    summary = index(config)
    assert (summary.objects, summary.shards, summary.skipped) == (9, 2, 0)
    fetched, issues = open_fetcher(config).sample(401)
    assert issues == [] and fetched.bands.shape == (4, 22, 22)
    assert_same_sample(fetched, by_route["parquet"][401])
    assert validate(config)["usable_objects"] == 9


def test_the_originals_per_split_folders_are_one_shard_each(project: Path):
    for split, ids in (("train", TRAIN), ("test", TEST)):
        datasets.Dataset(rows_to_table(rows(ids))).save_to_disk(
            str(project / "cache" / f"msiudek__astroPT_euclid_Q1_desi_dr1_dataset__{split}"))
    source = open_source(load_config(root=project, sets=["data.source=arrow:cache"]))
    result = build_index(source)
    assert source.shards() == [f"msiudek__astroPT_euclid_Q1_desi_dr1_dataset__{s}" for s in ("test", "train")]
    assert sorted(result.table.column("object_id").to_pylist()) == [*TRAIN, *TEST]
    row = result.table.column("object_id").to_pylist().index(304)
    record = Fetcher(source, ObjectIndex(result.table)).rows([304])
    assert result.table.column("row")[row].as_py() == 4 and record[0]["object_id"] == 304


def test_a_malformed_field_is_a_one_line_error_naming_object_and_field(project: Path):
    bad = rows(TRAIN)
    bad[2]["VIS_image"] = [row[: 5 + i % 2] for i, row in enumerate(bad[2]["VIS_image"])]  # ragged rows
    save(project / "arrow_cache", {"train": bad})
    strict = load_config(root=project, sets=["data.source=arrow_cache", "data.on_invalid=error"])
    with pytest.raises(DataError) as error:
        list(iter_samples(open_source(strict), RowChecker(strict.data), []))
    assert str(error.value).startswith("object 302, field VIS_image: not a 2-D array") and "\n" not in str(error.value)
    lenient = load_config(root=project, sets=["data.source=arrow_cache"])  # the default: the object loses its image
    issues: list = []
    samples = {s.object_id: s for s in iter_samples(open_source(lenient), RowChecker(lenient.data), issues)}
    assert [(i.object_id, i.field, i.action, i.location) for i in issues] == [(302, "VIS_image", DROPPED, "train:2")]
    assert samples[302].bands is None and samples[302].spectrum is not None and samples[303].bands is not None


def test_unreadable_or_empty_caches_are_one_line_errors(project: Path):
    config = load_config(root=project)
    (project / "empty").mkdir()
    with pytest.raises(ConfigError, match="holds no dataset saved by datasets' save_to_disk"):
        open_source(config, "arrow:empty")
    with pytest.raises(ConfigError, match="is not a directory"):
        open_source(config, "arrow:missing")
    save(project / "broken", {"train": rows(TRAIN)})
    next((project / "broken" / "train").glob("*.arrow")).write_bytes(b"not arrow at all")
    with pytest.raises(DataError) as error:
        open_source(config, "arrow:broken").read_ids("train")
    assert str(error.value).startswith("field train: cannot open the saved dataset") and "\n" not in str(error.value)


def test_the_fingerprint_follows_a_new_save_not_a_read(project: Path):
    save(project / "cache", {"train": rows(TRAIN)})
    config = load_config(root=project, sets=["data.source=cache"])
    before = open_source(config).fingerprint()
    open_source(config).read_rows("train", [0, 1])
    assert open_source(config).fingerprint() == before
    save(project / "cache", {"train": rows(TEST)})
    assert open_source(config).fingerprint() != before

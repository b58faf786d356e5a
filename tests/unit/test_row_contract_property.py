"""The row contract as a property: valid rows, mutated the ways real data goes wrong, never make the
checker raise, and what it lets through is finite and shaped as `Sample` says, all the way through
real model preprocessors.

Rows are built with numpy from a drawn seed (drawing thousands of pixels one by one would be slow);
hypothesis draws the sizes, ids and the mutations. Each property runs a fixed number of examples
(``derandomize``: the same rows on every run) and counts the rows it checked.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fmb.config import DataConfig
from fmb.data.index import build_index
from fmb.data.scan import iter_samples
from fmb.data.schema import BAND_COLUMNS, BAND_NAMES, RGB_COLUMN, SPECTRUM_LENGTH, encode_png, make_row
from fmb.data.sources.parquet import ParquetSource
from fmb.data.validate import ACTIONS, REDSHIFT_RANGE, SKIPPED, RowChecker, Sample
from fmb.models.astropt import AstroPTPreprocessor
from fmb.models.pixels import PixelsPreprocessor
from tests.conftest import write_rows
from tests.unit.test_validate import png_declaring

MIN_ROWS = 500
LIMITS = dict(min_cutout_px=16, max_cutout_px=32)
# a short spectrum keeps most examples fast; the real length also exercises the DESI grid check
CONFIGS = [DataConfig(spectrum_length=64, **LIMITS), DataConfig(spectrum_length=SPECTRUM_LENGTH, **LIMITS)]
PREPROCESSORS = [PixelsPreprocessor(16), AstroPTPreprocessor(16)]
ARRAYS = (*BAND_COLUMNS, "spectrum.flux", "spectrum.error", "spectrum.wavelength")
FIELDS = ("object_id", "targetid", "redshift", RGB_COLUMN, *BAND_COLUMNS, "spectrum", *ARRAYS[4:], "sed_data",
          "sed_data.flux_VIS")
INT64 = np.iinfo(np.int64)
BAD_NUMBERS = st.sampled_from([np.nan, np.inf, -np.inf, 1e39, -1e39, 0.0, 1e-30])
JUNK = st.sampled_from([None, "abc", "1.5", b"junk", [], [[1.0, 2.0], [3.0]], [[[1.0]]], [["a", "b"]], {"x": 1},
                        True, -1, 1.5, 2**64, np.uint64(2**63), INT64.min, [None, None]])


def batch_settings(max_examples: int) -> settings:
    return settings(max_examples=max_examples, deadline=None, database=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# -- valid rows and their mutations ----------------------------------------------------------------
def valid_row(object_id: int, seed: int, height: int, width: int, length: int) -> dict:
    rng = np.random.default_rng(seed)
    wavelength = None if length == SPECTRUM_LENGTH else np.linspace(3600.0, 9824.0, length)
    sed = {f"flux_{band}": float(rng.uniform(1, 100)) for band in BAND_NAMES}
    return make_row(object_id=object_id, bands=10 + rng.normal(0, 1, (4, height, width)),
                    flux=5 + rng.normal(0, 0.5, length), error=np.full(length, 0.2), wavelength=wavelength,
                    redshift=float(rng.uniform(0, 3)), sed=sed)


def holder(row: dict, target: str) -> tuple[dict | None, str]:
    """The dict holding `target` ("spectrum.flux": the row's spectrum) and the key in it."""
    parent, _, key = target.rpartition(".")
    found = row.get(parent) if parent else row
    return (found if isinstance(found, dict) else None), key


def get(row: dict, target: str):
    found, key = holder(row, target)
    return None if found is None else found.get(key)


def put(row: dict, target: str, value) -> None:
    found, key = holder(row, target)
    if found is not None:
        found[key] = value


def float64_copy(row: dict, target: str) -> np.ndarray | None:
    """The target array as a float64 copy put back in the row (so 1e39 stays 1e39), or None."""
    value = get(row, target)
    if not isinstance(value, np.ndarray) or value.dtype.kind != "f":
        return None
    put(row, target, value.astype(np.float64))
    return get(row, target)


def poke(draw, row: dict) -> None:
    """Some values of an array set to NaN, inf, beyond float32, zero or tiny: one, a few, half or all."""
    array = float64_copy(row, draw(st.sampled_from(ARRAYS)))
    if array is not None and array.size:
        count = draw(st.sampled_from([1, 5, array.size // 2, array.size]))
        few = st.lists(st.integers(0, array.size - 1), min_size=1, max_size=8)
        positions = draw(few) if count == 1 else slice(0, count)
        array.reshape(-1)[positions] = draw(BAD_NUMBERS)


def reshape(draw, row: dict) -> None:
    """An array cut short, transposed, given another rank, or made ragged."""
    target = draw(st.sampled_from(ARRAYS))
    array = get(row, target)
    if not isinstance(array, np.ndarray) or not array.size:
        return
    how = draw(st.sampled_from(["cut", "transpose", "rank", "ragged"]))
    if how == "cut":
        array = array[: draw(st.integers(0, len(array) - 1))]
    elif how == "transpose":
        array = array.T[:, : max(1, array.shape[0] - 3)] if array.ndim == 2 else array[::2]
    elif how == "rank":
        array = np.stack([array, array])
    elif array.ndim == 2:
        array = [array[0], array[1, :-1], *array[2:]]
    put(row, target, array)


def retype(draw, row: dict) -> None:
    """Any field replaced by a value of the wrong type (or None)."""
    put(row, draw(st.sampled_from(FIELDS)), draw(JUNK))


def remove(draw, row: dict) -> None:
    found, key = holder(row, draw(st.sampled_from(FIELDS)))
    if found is not None:
        found.pop(key, None)


def blank(draw, row: dict) -> None:
    array = float64_copy(row, draw(st.sampled_from(ARRAYS)))
    if array is not None:
        array[...] = 0.0


def mismatch_ids(draw, row: dict) -> None:
    object_id = row.get("object_id")
    if isinstance(object_id, int):
        row["targetid"] = object_id + 1 if object_id < INT64.max else object_id - 1


def odd_id(draw, row: dict) -> None:
    """Ids at and beyond the edges of int64 (the minimum is the index's missing-id marker)."""
    row["object_id"] = row["targetid"] = draw(st.sampled_from([INT64.min, INT64.min + 1, INT64.max, -7, 0]))


def bad_rgb_bytes(draw, row: dict) -> None:
    png = get(row, f"{RGB_COLUMN}.bytes")
    png = png if isinstance(png, bytes) and png else encode_png(np.zeros((20, 20, 3)))["bytes"]
    how = draw(st.sampled_from(["truncate", "flip", "random", "size", "bomb", "no bytes"]))
    if how == "truncate":
        png = png[: draw(st.integers(0, len(png) - 1))]
    elif how == "flip":
        at = draw(st.integers(0, len(png) - 1))
        png = png[:at] + bytes([png[at] ^ 0xFF]) + png[at + 1 :]
    elif how == "random":
        png = draw(st.binary(max_size=64))
    elif how == "size":
        png = encode_png(np.full((draw(st.integers(8, 40)), draw(st.integers(8, 40)), 3), 50, np.uint8))["bytes"]
    elif how == "bomb":
        png = png_declaring(draw(st.sampled_from([64, 4000, 100_000])), 100_000)
    row[RGB_COLUMN] = {"bytes": None if how == "no bytes" else png, "path": None}


def bad_rgb_array(draw, row: dict) -> None:
    """An RGB array instead of encoded bytes: floats and integers in and out of range, other shapes."""
    dtype = draw(st.sampled_from([np.float64, np.float32, np.int64, np.uint16, np.uint8]))
    low, high = draw(st.sampled_from([(0.0, 1.0), (0.0, 255.0), (0.0, 300.0), (-1.0, 0.0)]))
    shape = (24, 24, draw(st.sampled_from([3, 4])))
    rgb = np.random.default_rng(draw(st.integers(0, 2**32 - 1))).uniform(low, high, shape)
    with np.errstate(invalid="ignore"):
        row[RGB_COLUMN] = rgb.astype(dtype)
    if dtype in (np.float64, np.float32) and draw(st.booleans()):
        row[RGB_COLUMN][0, 0, 0] = np.nan


def bad_scalars(draw, row: dict) -> None:
    """Redshift and SED values that are not finite, beyond float32 or outside the physical range."""
    value = draw(st.sampled_from([np.nan, np.inf, -1.0, 99.0, 1e39, -0.005, 5.0]))
    put(row, draw(st.sampled_from(["redshift", "sed_data.flux_VIS", "sed_data.flux_H"])), value)


# what a Parquet file of `ROW_SCHEMA` can hold: its columns have fixed types, so rows with strings,
# nested lists or numpy uint64 in typed columns, or RGB arrays instead of encoded images, cannot be
# written to it; those mutations are checked in memory only
STORABLE: list[Callable] = [poke, reshape, remove, blank, mismatch_ids, odd_id, bad_rgb_bytes, bad_scalars]
IN_MEMORY_ONLY: list[Callable] = [retype, bad_rgb_array]


@st.composite
def batches(draw, storable: bool) -> tuple[DataConfig, list[dict]]:
    """A config and 10-14 rows under it; small ids repeat, so batches hold duplicates."""
    config = draw(st.sampled_from(CONFIGS))
    mutations = STORABLE if storable else STORABLE + IN_MEMORY_ONLY
    rows = []
    for _ in range(draw(st.integers(10, 14))):
        object_id = draw(st.one_of(st.integers(0, 12), st.integers(INT64.min + 1, INT64.max)))
        height, width = draw(st.integers(16, 32)), draw(st.integers(16, 32))
        row = valid_row(object_id, draw(st.integers(0, 2**32 - 1)), height, width, config.spectrum_length)
        for mutate in draw(st.lists(st.sampled_from(mutations), max_size=4)):
            mutate(draw, row)
        rows.append(row)
    return config, rows


# -- what must hold -----------------------------------------------------------------------------------
def named_id(row: dict) -> int | None:
    """The first id of the row that is an int64 integer (the index's missing marker excluded)."""
    for key in ("object_id", "targetid"):
        value = row.get(key)
        if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
            value = int(value) if abs(value) <= 2**53 else None  # larger floats may have lost digits
        if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
            if INT64.min < int(value) <= INT64.max:
                return int(value)
    return None


def assert_issues(row: dict, sample: Sample | None, issues: list) -> None:
    """One skip exactly when there is no sample; every issue well formed and naming the object."""
    skips = [issue for issue in issues if issue.action == SKIPPED]
    assert (sample is None) == (len(skips) == 1) and len(skips) <= 1, issues
    for issue in issues:
        assert_well_formed(issue)
        assert issue.object_id == named_id(row), (issue, named_id(row))


def assert_well_formed(issue) -> None:
    assert issue.action in ACTIONS and isinstance(issue.field, str) and issue.field, issue
    assert isinstance(issue.reason, str) and issue.reason.strip(), issue


def assert_sample(sample: Sample, config: DataConfig) -> None:
    assert type(sample.object_id) is int and sample.targetid == sample.object_id
    assert any(part is not None for part in (sample.bands, sample.rgb, sample.spectrum))
    if sample.bands is not None:
        bands = sample.bands
        assert bands.dtype == np.float32 and bands.ndim == 3 and bands.shape[0] == 4 and np.isfinite(bands).all()
        assert_accepted_size(bands.shape[1:], config)
    if sample.rgb is not None:
        assert sample.rgb.dtype == np.uint8 and sample.rgb.ndim == 3 and sample.rgb.shape[2] == 3
        assert_accepted_size(sample.rgb.shape[:2], config)
        assert sample.bands is None or sample.rgb.shape[:2] == sample.bands.shape[1:]
    if sample.spectrum is not None:
        assert_spectrum(sample.spectrum, config.spectrum_length)
    low, high = REDSHIFT_RANGE
    assert isinstance(sample.redshift, float) and (np.isnan(sample.redshift) or low <= sample.redshift <= high)
    for key, value in sample.sed.items():  # NaN only as "unknown"
        assert key.startswith("flux_") and isinstance(value, float)
        assert np.isnan(value) or abs(value) <= np.finfo(np.float32).max


def assert_accepted_size(shape: tuple[int, ...], config: DataConfig) -> None:
    assert config.min_cutout_px <= min(shape) and max(shape) <= config.max_cutout_px, shape


def assert_spectrum(spectrum, length: int) -> None:
    for part in (spectrum.flux, spectrum.ivar, spectrum.wavelength):
        assert part.dtype == np.float32 and part.shape == (length,) and np.isfinite(part).all()
    assert spectrum.mask.dtype == bool and spectrum.mask.shape == (length,)
    assert (spectrum.ivar >= 0).all()
    assert not spectrum.flux[spectrum.mask].any() and not spectrum.ivar[spectrum.mask].any()
    assert (np.diff(spectrum.wavelength) > 0).all()


def assert_model_inputs_finite(samples: list[Sample]) -> None:
    for preprocessor in PREPROCESSORS:
        usable = [sample for sample in samples if preprocessor.usable(sample) is None]
        if usable:
            for name, tensor in preprocessor(usable).items():
                assert not tensor.is_floating_point() or torch.isfinite(tensor).all(), (preprocessor.model, name)


# -- the properties -----------------------------------------------------------------------------------
ROWS_CHECKED: Counter = Counter()  # rows per property, over all its examples


@batch_settings(50)
@given(batches(storable=False))
def contract_holds_in_memory(batch) -> None:
    config, rows = batch
    checker, samples = RowChecker(config), []
    ROWS_CHECKED["in memory"] += len(rows)
    for row in rows:
        sample, issues = checker.check(row)
        assert_issues(row, sample, issues)
        if sample is not None:
            assert_sample(sample, config)
            samples.append(sample)
    assert_model_inputs_finite(samples)


@batch_settings(12)
@given(batches(storable=True))
def contract_holds_through_parquet(batch) -> None:
    config, rows = batch
    with tempfile.TemporaryDirectory() as tmp, np.errstate(over="ignore"):  # one directory per example
        write_rows(Path(tmp) / "part-0.parquet", rows[:6])  # float32 columns: 1e39 is stored as inf
        write_rows(Path(tmp) / "part-1.parquet", rows[6:])
        source = ParquetSource(Path(tmp))
        index = build_index(source).table.to_pylist()
        issues: list = []
        samples = list(iter_samples(source, RowChecker(config), issues, batch_size=4))
    ROWS_CHECKED["through Parquet"] += len(rows)
    for issue in issues:
        assert_well_formed(issue)
    for sample in samples:
        assert_sample(sample, config)
    assert_model_inputs_finite(samples)
    # the pass agrees with the index: each row is one sample or one skip, no id twice, and every
    # indexed object is yielded or skipped at the very row the index holds for it
    skipped_at = {issue.location for issue in issues if issue.action == SKIPPED}
    ids = [sample.object_id for sample in samples]
    assert len(samples) + len(skipped_at) == len(rows) and len(set(ids)) == len(ids)
    for entry in index:
        assert entry["object_id"] in ids or f"{entry['shard']}:{entry['row']}" in skipped_at
    assert set(ids) <= {entry["object_id"] for entry in index}


def test_every_generated_row_meets_the_contract():
    ROWS_CHECKED["in memory"] = 0
    contract_holds_in_memory()
    assert ROWS_CHECKED["in memory"] >= MIN_ROWS


def test_rows_read_back_from_parquet_meet_the_contract_and_agree_with_the_index():
    ROWS_CHECKED["through Parquet"] = 0
    contract_holds_through_parquet()
    assert ROWS_CHECKED["through Parquet"] >= 100

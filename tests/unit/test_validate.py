"""Every bad-input case of the row contract: a clear issue naming object and field, or an error."""

import io
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from fmb.config import DataConfig
from fmb.data.schema import BAND_COLUMNS, encode_png
from fmb.data.validate import DROPPED, NOTED, REPAIRED, SKIPPED, RowChecker
from fmb.errors import DataError
from tests.conftest import tagged_row


def check(row, **limits):
    return RowChecker(DataConfig(**limits)).check(row)


def only(issues, field):
    found = [issue for issue in issues if issue.field == field]
    assert len(found) == 1, issues
    return found[0]


def test_clean_row_passes_without_issues():
    sample, issues = check(tagged_row(7))
    assert issues == []
    assert sample.bands.shape == (4, 24, 24) and sample.rgb.shape == (24, 24, 3)
    assert np.all(np.isfinite(sample.spectrum.ivar)) and not sample.spectrum.mask.any()


def test_few_nan_pixels_are_zeroed_and_recorded():
    row = tagged_row(7)
    row["NISP_J_image"][3, :5] = np.nan
    row["VIS_image"][0, 0] = np.inf
    sample, issues = check(row)
    issue = only(issues, "bands")
    assert (issue.action, issue.object_id) == (REPAIRED, 7) and "6 NaN/inf" in issue.reason
    assert np.all(np.isfinite(sample.bands)) and sample.bands[2, 3, 0] == 0


def test_mostly_nan_bands_drop_the_image_naming_each_band_but_keep_the_spectrum():
    row = tagged_row(7)
    row["VIS_image"][:] = np.nan
    row["NISP_Y_image"][:12] = np.nan
    sample, issues = check(row, max_bad_pixel_fraction=0.2)
    issue = only(issues, "VIS_image, NISP_Y_image")
    assert issue.action == DROPPED and "NISP_Y_image: 50.0% bad pixels (288 NaN/inf)" in issue.reason
    assert sample.bands is None and sample.spectrum is not None


def test_nonfinite_flux_is_masked_never_passed_on():
    row = tagged_row(7)
    row["spectrum"]["flux"][100:110] = np.nan
    row["spectrum"]["flux"][200] = -np.inf
    sample, issues = check(row)
    assert only(issues, "spectrum.flux").reason.startswith("11 NaN/inf")
    spectrum = sample.spectrum
    assert spectrum.mask[100:110].all() and spectrum.ivar[200] == 0 and np.isfinite(spectrum.flux).all()


@pytest.mark.parametrize("bad", [0.0, -1.0, np.nan, 1e-30])
def test_zero_negative_nan_or_tiny_errors_never_give_infinite_ivar(bad):
    row = tagged_row(7)
    row["spectrum"]["error"][50:60] = bad
    sample, issues = check(row)
    assert np.all(np.isfinite(sample.spectrum.ivar))
    assert np.all(sample.spectrum.ivar[50:60] == 0) and sample.spectrum.mask[50:60].all()
    if bad != 1e-30:
        assert only(issues, "spectrum.error").action == REPAIRED


def test_infinite_error_is_an_ordinary_masked_pixel():
    row = tagged_row(7)
    row["spectrum"]["error"][:5] = np.inf
    sample, issues = check(row)
    assert issues == [] and sample.spectrum.mask[:5].all()


def test_wrong_spectrum_length_drops_the_spectrum_with_the_lengths():
    row = tagged_row(7)
    row["spectrum"] = {key: value[:7000] for key, value in row["spectrum"].items()}
    sample, issues = check(row)
    issue = only(issues, "spectrum.flux")
    assert issue.action == DROPPED and "length 7000, expected 7781" in issue.reason
    assert sample.spectrum is None and sample.bands is not None


def test_mismatched_error_length_is_caught():
    row = tagged_row(7)
    row["spectrum"]["error"] = row["spectrum"]["error"][:-1]
    _, issues = check(row)
    assert "length 7780" in only(issues, "spectrum.error").reason


def test_wavelength_off_the_desi_grid_is_rejected():
    row = tagged_row(7)
    row["spectrum"]["wavelength"] = row["spectrum"]["wavelength"] + 5.0
    _, issues = check(row)
    assert "off the DESI grid" in only(issues, "spectrum.wavelength").reason


def test_bands_of_differing_sizes_are_dropped_naming_the_sizes():
    row = tagged_row(7)
    row["NISP_H_image"] = np.zeros((20, 24), np.float32)
    sample, issues = check(row)
    issue = only(issues, "bands")
    assert issue.action == DROPPED and "NISP_H_image 20x24" in issue.reason
    assert sample.bands is None and sample.rgb is not None  # the stored RGB composite is still usable


@pytest.mark.parametrize("size", [8, 40])
def test_cutouts_outside_the_accepted_size_are_dropped(size):
    row = tagged_row(7, size=size)
    sample, issues = check(row, min_cutout_px=16, max_cutout_px=32)
    assert any(issue.action == DROPPED and f"size {size}x{size}" in issue.reason for issue in issues)
    assert sample.bands is None and sample.rgb is None


def test_ragged_or_wrong_rank_images_are_dropped():
    row = tagged_row(7)
    row["VIS_image"] = [[1.0, 2.0], [3.0]]
    _, issues = check(row)
    assert "not a 2-D array" in only(issues, "VIS_image").reason
    row = tagged_row(7)
    row["NISP_Y_image"] = np.zeros((3, 24, 24))
    _, issues = check(row)
    assert only(issues, "NISP_Y_image").action == DROPPED


def test_missing_band_or_spectrum_drops_that_modality_only():
    row = tagged_row(7)
    row["NISP_J_image"] = None
    row["spectrum"] = None
    sample, issues = check(row)
    assert only(issues, "NISP_J_image").action == DROPPED
    assert only(issues, "spectrum").action == DROPPED
    assert sample.bands is None and sample.spectrum is None and sample.rgb is not None


def test_missing_rgb_is_built_from_the_bands():
    row = tagged_row(7)
    row["RGB_image"] = None
    sample, issues = check(row)
    assert only(issues, "RGB_image").action == REPAIRED and sample.rgb.shape == (24, 24, 3)


def test_undecodable_rgb_bytes_drop_the_rgb():
    row = tagged_row(7)
    row["RGB_image"] = {"bytes": b"not a png", "path": None}
    sample, issues = check(row)
    assert "cannot decode" in only(issues, "RGB_image").reason and sample.rgb is None


def test_plain_png_bytes_and_jpeg_are_accepted():
    buffer = io.BytesIO()
    Image.fromarray(np.full((24, 24, 3), 200, np.uint8)).save(buffer, format="JPEG")
    row = tagged_row(7)
    row["RGB_image"] = buffer.getvalue()
    sample, issues = check(row)
    assert issues == [] and abs(int(sample.rgb.mean()) - 200) <= 2


def test_object_with_no_usable_modality_is_skipped():
    row = tagged_row(7)
    for key in ("RGB_image", "VIS_image", "NISP_Y_image", "NISP_J_image", "NISP_H_image", "spectrum"):
        row[key] = None
    sample, issues = check(row)
    assert sample is None and only(issues, "object").action == SKIPPED


def test_missing_id_falls_back_to_targetid_then_skips():
    row = tagged_row(7)
    row["object_id"] = None
    sample, _ = check(row)
    assert sample.object_id == 7
    row["targetid"] = None
    sample, issues = check(row)
    assert sample is None and only(issues, "object_id").action == SKIPPED


def test_missing_redshift_is_noted_not_fatal():
    row = tagged_row(7)
    row["redshift"] = None
    sample, issues = check(row)
    assert np.isnan(sample.redshift) and only(issues, "redshift").action == NOTED


def test_error_policy_raises_naming_object_and_field():
    row = tagged_row(123)
    row["spectrum"]["flux"] = row["spectrum"]["flux"][:10]
    with pytest.raises(DataError, match=r"object 123, field spectrum.flux: length 10, expected 7781"):
        check(row, on_invalid="error")


# -- ids ------------------------------------------------------------------------------------------
def test_differing_object_id_and_targetid_skip_the_row_naming_both():
    row = tagged_row(7)
    row["targetid"] = 8
    sample, issues = check(row)
    (issue,) = issues
    assert sample is None and (issue.object_id, issue.action) == (7, SKIPPED)
    assert "object_id 7 and targetid 8 differ" in issue.reason and issue.field == "object_id, targetid"


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("object_id", 2**63, "9223372036854775808 does not fit int64"),
        ("object_id", np.uint64(2**64 - 1), "18446744073709551615 does not fit int64"),
        ("targetid", np.iinfo(np.int64).min, "reserved: int64's minimum marks a missing id"),
        ("object_id", "7", "not an integer"),
        ("object_id", True, "not an integer"),
        ("object_id", 7.5, "not a whole number"),
        ("object_id", float(2**60), "not a whole number"),  # a float this large may be a neighbouring id
    ],
)
def test_ids_that_are_not_int64_integers_are_skipped_never_wrapped(key, value, reason):
    row = tagged_row(7)
    row[key] = value
    sample, issues = check(row)
    (issue,) = issues
    assert sample is None and issue.field == key and issue.action == SKIPPED and reason in issue.reason


def test_negative_ids_and_whole_float_ids_are_kept():
    row = tagged_row(7)
    row["object_id"] = row["targetid"] = -(2**62)
    sample, issues = check(row)
    assert issues == [] and (sample.object_id, sample.targetid) == (-(2**62), -(2**62))
    row["object_id"] = row["targetid"] = np.float64(7.0)
    sample, _ = check(row)
    assert sample.object_id == 7 and type(sample.object_id) is int


# -- dead data and values beyond float32 ------------------------------------------------------------
def test_one_all_nan_band_drops_the_image_though_the_others_are_clean():
    row = tagged_row(7)
    row["NISP_J_image"][:] = np.nan  # a quarter of all pixels: within the limit when counted over all bands
    sample, issues = check(row)
    issue = only(issues, "NISP_J_image")
    assert issue.action == DROPPED and "100.0% bad pixels" in issue.reason and sample.bands is None


@pytest.mark.parametrize("columns", [["NISP_H_image"], list(BAND_COLUMNS)])
def test_all_zero_bands_drop_the_image(columns):
    row = tagged_row(7)
    for column in columns:
        row[column][:] = 0.0
    sample, issues = check(row)
    issue = only(issues, ", ".join(columns))
    assert issue.action == DROPPED and "no non-zero pixel (a dead detector" in issue.reason
    assert sample.bands is None and sample.spectrum is not None


def test_all_zero_flux_drops_the_spectrum():
    row = tagged_row(7)
    row["spectrum"]["flux"][:] = 0.0
    sample, issues = check(row)
    assert "no non-zero flux" in only(issues, "spectrum.flux").reason and sample.spectrum is None


def test_band_values_beyond_float32_are_zeroed_and_said_so():
    row = tagged_row(7)
    row["VIS_image"] = row["VIS_image"].astype(np.float64)
    row["VIS_image"][0, :3] = 1e39
    row["VIS_image"][1, 0] = np.nan
    sample, issues = check(row)
    issue = only(issues, "bands")
    assert issue.action == REPAIRED and issue.reason == "1 NaN/inf and 3 beyond float32 pixels set to 0 (in VIS_image)"
    assert sample.bands.dtype == np.float32 and np.isfinite(sample.bands).all() and sample.bands[0, 0, 0] == 0


def test_a_band_mostly_beyond_float32_drops_the_image():
    row = tagged_row(7)
    row["NISP_Y_image"] = np.full((24, 24), -1e39)
    _, issues = check(row)
    assert "(576 beyond float32)" in only(issues, "NISP_Y_image").reason


def test_flux_beyond_float32_is_masked():
    row = tagged_row(7)
    row["spectrum"]["flux"] = row["spectrum"]["flux"].astype(np.float64)
    row["spectrum"]["flux"][10:14] = 1e39
    sample, issues = check(row)
    assert only(issues, "spectrum.flux").reason == "4 beyond float32 fluxes masked"
    assert sample.spectrum.mask[10:14].all() and np.isfinite(sample.spectrum.flux).all()


@pytest.mark.parametrize("error", [1e-30, 1e39])
def test_errors_whose_inverse_variance_leaves_float32_are_masked_and_said_so(error):
    row = tagged_row(7)
    row["spectrum"]["error"] = row["spectrum"]["error"].astype(np.float64)
    row["spectrum"]["error"][:5] = error
    sample, issues = check(row)
    assert only(issues, "spectrum.error").reason == "5 tiny or huge (1/error^2 beyond float32) errors masked"
    assert (sample.spectrum.ivar[:5] == 0).all() and np.isfinite(sample.spectrum.ivar).all()


def test_errors_masked_for_being_tiny_count_towards_the_masked_limit():
    row = tagged_row(7)
    row["spectrum"]["error"][:] = 1e-30
    sample, issues = check(row)
    assert only(issues, "spectrum").action == DROPPED and sample.spectrum is None


def test_wavelength_beyond_float32_or_merged_by_the_cast_drops_the_spectrum():
    limits = {"spectrum_length": 4}
    for wavelength in ([4000.0, 5000.0, 6000.0, 1e39], [4000.0, 4000.0001, 5000.0, 6000.0]):
        row = tagged_row(7)
        row["spectrum"] = {"flux": [1.0] * 4, "wavelength": wavelength, "error": [0.1] * 4}
        _, issues = check(row, **limits)
        assert "strictly increasing (as float32)" in only(issues, "spectrum.wavelength").reason


# -- redshift and SED ---------------------------------------------------------------------------------
@pytest.mark.parametrize("redshift", [-1.0, -0.02, 10.5, 99.0, 1e39])
def test_redshift_outside_the_physical_range_is_noted_and_set_to_nan(redshift):
    row = tagged_row(7)
    row["redshift"] = redshift
    sample, issues = check(row)
    issue = only(issues, "redshift")
    assert issue.action == NOTED and f"{redshift:g} outside the physical range -0.01 to 10" in issue.reason
    assert np.isnan(sample.redshift)


def test_a_star_at_slightly_negative_redshift_is_kept():
    row = tagged_row(7)
    row["redshift"] = -0.003
    sample, issues = check(row)
    assert issues == [] and sample.redshift == -0.003


def test_unusable_sed_values_are_noted_and_nan_missing_ones_just_nan():
    row = tagged_row(7)
    row["sed_data"] = {"flux_VIS": "abc", "flux_Y": [1, 2], "flux_J": 1e39, "flux_H": None, "flux_g": 3.5, 7: 1.0}
    sample, issues = check(row)
    assert {issue.field for issue in issues} == {"sed_data.flux_VIS", "sed_data.flux_Y", "sed_data.flux_J"}
    assert all(issue.action == NOTED for issue in issues)
    assert "'abc'" in only(issues, "sed_data.flux_VIS").reason
    assert "beyond float32" in only(issues, "sed_data.flux_J").reason
    assert sample.sed["flux_g"] == 3.5 and all(np.isnan(sample.sed[f"flux_{b}"]) for b in ("VIS", "Y", "J", "H"))


def test_sed_that_is_not_a_struct_is_noted():
    row = tagged_row(7)
    row["sed_data"] = [1.0, 2.0]
    sample, issues = check(row)
    assert only(issues, "sed_data").action == NOTED and sample.sed == {}


# -- RGB ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("encoded", [True, False])
def test_rgb_of_another_size_than_the_bands_is_rebuilt_from_them(encoded):
    rgb = np.full((30, 20, 3), 99, np.uint8)
    row = tagged_row(7)
    row["RGB_image"] = encode_png(rgb) if encoded else rgb
    sample, issues = check(row)
    issue = only(issues, "RGB_image")
    assert issue.action == REPAIRED and "size 30x20 differs from the bands' 24x24" in issue.reason
    assert sample.rgb.shape == (24, 24, 3) and sample.rgb.dtype == np.uint8


def test_rgb_without_bands_is_kept_at_its_own_size():
    row = tagged_row(7)
    row["VIS_image"] = None
    row["RGB_image"] = encode_png(np.full((30, 20, 3), 99, np.uint8))
    sample, _ = check(row)
    assert sample.rgb.shape == (30, 20, 3)


@pytest.mark.parametrize(("scale", "value", "expected"), [(1.0, 0.5, 128), (1.0, 1.0, 255), (255.0, 99.6, 100)])
def test_float_rgb_arrays_in_unit_or_byte_range_are_scaled_or_rounded(scale, value, expected):
    rgb = np.zeros((24, 24, 3))
    rgb[0, 0] = value
    rgb[1, 1] = scale  # sets the range the array is read in
    row = tagged_row(7)
    row["RGB_image"] = rgb
    sample, issues = check(row)
    assert issues == [] and sample.rgb.dtype == np.uint8 and sample.rgb[0, 0, 0] == expected


@pytest.mark.parametrize(
    ("value", "reason"),
    [(-0.5, "outside 0-255"), (300.0, "outside 0-255"), (np.nan, "NaN/inf"), (np.int64(256), "outside 0-255"),
     (np.int16(-1), "outside 0-255")],
)
def test_rgb_arrays_that_would_wrap_around_are_dropped(value, reason):
    rgb = np.full((24, 24, 3), 10, dtype=np.asarray(value).dtype)
    rgb[3, 3, 1] = value
    row = tagged_row(7)
    row["RGB_image"] = rgb
    sample, issues = check(row)
    issue = only(issues, "RGB_image")
    assert issue.action == DROPPED and reason in issue.reason and sample.rgb is None


def png_declaring(width: int, height: int) -> bytes:
    """A valid 1x1 PNG whose header claims width x height (with a correct CRC): a decompression bomb."""
    data = bytearray(encode_png(np.zeros((1, 1, 3), np.uint8))["bytes"])
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[12:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr))
    return bytes(data)


@pytest.mark.parametrize(
    ("side", "limits", "reason"),
    [
        (100_000, {}, "decompression bomb"),  # PIL's own check, at open: over twice its pixel limit
        (10_000, {"max_cutout_px": 20_000}, "decompression bomb"),  # PIL's warning, turned into a refusal
        (4_000, {}, "declared size 4000x4000 is over the accepted 1024 px; not decoded"),
    ],
)
def test_decompression_bomb_png_is_dropped_without_decoding(side, limits, reason, monkeypatch):
    with monkeypatch.context() as unlimited:  # the header is valid: PIL reads it when its bomb check is off
        unlimited.setattr(Image, "MAX_IMAGE_PIXELS", None)
        assert Image.open(io.BytesIO(png_declaring(side, side))).size == (side, side)
    monkeypatch.setattr(Image.Image, "convert", lambda *a, **k: pytest.fail("the bomb was decoded"))
    row = tagged_row(7)
    row["RGB_image"] = {"bytes": png_declaring(side, side), "path": None}
    sample, issues = check(row, **limits)
    issue = only(issues, "RGB_image")
    assert issue.action == DROPPED and reason in issue.reason and sample.rgb is None and sample.bands is not None

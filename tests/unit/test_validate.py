"""Every bad-input case of the row contract: a clear issue naming object and field, or an error."""

import io

import numpy as np
import pytest
from PIL import Image

from fmb.config import DataConfig
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


def test_mostly_nan_image_drops_the_image_but_keeps_the_spectrum():
    row = tagged_row(7)
    row["VIS_image"][:] = np.nan
    row["NISP_Y_image"][:12] = np.nan
    sample, issues = check(row, max_bad_pixel_fraction=0.2)
    assert only(issues, "bands").action == DROPPED
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

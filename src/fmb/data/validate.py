"""Check one input row against the contract and turn it into a `Sample`.

Every problem becomes an `Issue` naming the object and the field, with what was done about it:

* ``skipped``          the object is unusable (no id, no usable modality); it never reaches a model;
* ``modality dropped`` one modality is unusable (wrong spectrum length, differing band sizes, ...);
  the object stays, and stages needing that modality skip it;
* ``repaired``         a few bad values were masked (NaN pixels set to 0, ivar 0 where the
  error is zero/negative/NaN); never an infinite inverse variance;
* ``noted``            an optional field is missing (redshift, SED).

An image and a spectrum only ever meet inside one `Sample` built from one row, so they cannot be
mis-paired downstream.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmb.config import DataConfig
from fmb.data.schema import BAND_COLUMNS, LOAD_PROBLEMS, RGB_COLUMN, desi_wavelength, rgb_composite
from fmb.errors import DataError

SKIPPED, DROPPED, REPAIRED, NOTED = "skipped", "modality dropped", "repaired", "noted"
_GRID_TOLERANCE_A = 0.5


@dataclass(frozen=True)
class Issue:
    object_id: int | None
    field: str
    reason: str
    action: str
    location: str = ""  # shard:row when known


@dataclass
class Spectrum:
    flux: np.ndarray  # (L,) float32, 0 where masked
    wavelength: np.ndarray  # (L,) float32, Angstrom, observed frame
    ivar: np.ndarray  # (L,) float32, 0 where masked; always finite
    mask: np.ndarray  # (L,) bool, True = bad pixel

    @property
    def error(self) -> np.ndarray:
        with np.errstate(divide="ignore"):
            return np.where(self.ivar > 0, 1 / np.sqrt(self.ivar), np.inf).astype(np.float32)


@dataclass
class Sample:
    """One object, checked: what is present is finite and consistently shaped."""

    object_id: int
    targetid: int
    redshift: float
    bands: np.ndarray | None  # (4, H, W) float32 ADU, VIS/Y/J/H
    rgb: np.ndarray | None  # (H, W, 3) uint8
    spectrum: Spectrum | None
    sed: dict[str, float] = field(default_factory=dict)


class RowChecker:
    """Validates rows under one `DataConfig` (limits and the skip/error policy)."""

    def __init__(self, config: DataConfig | None = None):
        self.config = config or DataConfig()

    def check(self, row: dict) -> tuple[Sample | None, list[Issue]]:
        """The sample (or None when skipped) and every issue found.

        With ``on_invalid='error'`` a skipped object or dropped modality raises `DataError`.
        """
        issues: list[Issue] = []
        object_id = _object_id(row)
        if object_id is None:
            issues.append(Issue(None, "object_id", "missing or not an integer (and no targetid)", SKIPPED))
            return self._finish(None, issues)
        report = _Reporter(object_id, issues)
        for field_name, reason in row.get(LOAD_PROBLEMS) or []:
            report(field_name, reason, DROPPED)
        bands = self._bands(row, report)
        rgb = self._rgb(row, bands, report)
        spectrum = self._spectrum(row.get("spectrum"), report)
        if bands is None and rgb is None and spectrum is None:
            report("object", "no usable image or spectrum", SKIPPED)
            return self._finish(None, issues)
        sample = Sample(
            object_id=object_id,
            targetid=_as_int(row.get("targetid"), default=object_id),
            redshift=_redshift(row.get("redshift"), report),
            bands=bands,
            rgb=rgb,
            spectrum=spectrum,
            sed=_sed(row.get("sed_data")),
        )
        return self._finish(sample, issues)

    def _finish(self, sample: Sample | None, issues: list[Issue]) -> tuple[Sample | None, list[Issue]]:
        if self.config.on_invalid == "error":
            for issue in issues:
                if issue.action in (SKIPPED, DROPPED):
                    raise DataError(f"{issue.reason} ({issue.action})", object_id=issue.object_id, field=issue.field)
        return sample, issues

    # -- images -------------------------------------------------------------------------------
    def _bands(self, row: dict, report: "_Reporter") -> np.ndarray | None:
        present = [column for column in BAND_COLUMNS if row.get(column) is not None]
        if not present:
            report("bands", "no Euclid band images", DROPPED)
            return None
        if len(present) < len(BAND_COLUMNS):
            missing = ", ".join(sorted(set(BAND_COLUMNS) - set(present)))
            report(missing, "band image missing; the 4-band image needs VIS, Y, J and H", DROPPED)
            return None
        arrays = []
        for column in BAND_COLUMNS:
            array = _as_2d(row[column])
            if array is None:
                report(column, "not a 2-D array of numbers (ragged or wrong rank)", DROPPED)
                return None
            if not self._size_ok(array.shape, column, report):
                return None
            arrays.append(array)
        shapes = {column: array.shape for column, array in zip(BAND_COLUMNS, arrays)}
        if len(set(shapes.values())) > 1:
            detail = ", ".join(f"{column} {shape[0]}x{shape[1]}" for column, shape in shapes.items())
            report("bands", f"band images differ in size ({detail})", DROPPED)
            return None
        bands = np.stack(arrays).astype(np.float32)
        return self._repair_pixels(bands, "bands", report)

    def _rgb(self, row: dict, bands: np.ndarray | None, report: "_Reporter") -> np.ndarray | None:
        value = row.get(RGB_COLUMN)
        if value is None:
            if bands is None:
                return None
            report(RGB_COLUMN, "missing; built from the H, Y and VIS bands", REPAIRED)
            return rgb_composite(bands[0], bands[1], bands[3])
        try:
            rgb = _decode_image(value)
        except ValueError as exc:
            report(RGB_COLUMN, str(exc), DROPPED)
            return None
        return rgb if self._size_ok(rgb.shape[:2], RGB_COLUMN, report) else None

    def _size_ok(self, shape: tuple[int, ...], name: str, report: "_Reporter") -> bool:
        low, high = self.config.min_cutout_px, self.config.max_cutout_px
        if min(shape) < low or max(shape) > high:
            report(name, f"size {shape[0]}x{shape[1]} outside the accepted {low}-{high} px", DROPPED)
            return False
        return True

    def _repair_pixels(self, bands: np.ndarray, name: str, report: "_Reporter") -> np.ndarray | None:
        bad = ~np.isfinite(bands)
        if not bad.any():
            return bands
        fraction = bad.mean()
        if fraction > self.config.max_bad_pixel_fraction:
            report(name, f"{fraction:.0%} of pixels are NaN/inf", DROPPED)
            return None
        report(name, f"{int(bad.sum())} NaN/inf pixels set to 0", REPAIRED)
        return np.where(bad, 0.0, bands).astype(np.float32)

    # -- spectrum -----------------------------------------------------------------------------
    def _spectrum(self, value, report: "_Reporter") -> Spectrum | None:
        if value is None:
            report("spectrum", "missing", DROPPED)
            return None
        arrays = {}
        for part in ("flux", "wavelength", "error"):
            array = _as_1d(value.get(part) if isinstance(value, dict) else None)
            if array is None:
                report(f"spectrum.{part}", "missing or not a 1-D array of numbers", DROPPED)
                return None
            arrays[part] = array
        expected = self.config.spectrum_length
        for part, array in arrays.items():
            if len(array) != expected:
                report(f"spectrum.{part}", f"length {len(array)}, expected {expected}", DROPPED)
                return None
        if not self._grid_ok(arrays["wavelength"], report):
            return None
        return self._mask_spectrum(arrays["flux"], arrays["wavelength"], arrays["error"], report)

    def _grid_ok(self, wavelength: np.ndarray, report: "_Reporter") -> bool:
        if not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0):
            report("spectrum.wavelength", "not finite and strictly increasing", DROPPED)
            return False
        if len(wavelength) == len(desi_wavelength()):
            offset = np.max(np.abs(wavelength - desi_wavelength()))
            if offset > _GRID_TOLERANCE_A:
                report("spectrum.wavelength", f"off the DESI grid by up to {offset:.1f} A", DROPPED)
                return False
        return True

    def _mask_spectrum(self, flux, wavelength, error, report: "_Reporter") -> Spectrum | None:
        bad_flux = ~np.isfinite(flux)
        bad_error = np.isnan(error) | (error <= 0) | (np.isneginf(error))
        mask = bad_flux | bad_error | np.isposinf(error)  # +inf error = an already-masked pixel
        if mask.mean() > self.config.max_masked_spectrum_fraction:
            report("spectrum", f"{mask.mean():.0%} of pixels masked or invalid", DROPPED)
            return None
        if bad_flux.any():
            report("spectrum.flux", f"{int(bad_flux.sum())} NaN/inf fluxes masked", REPAIRED)
        if bad_error.any():
            report("spectrum.error", f"{int(bad_error.sum())} zero, negative or NaN errors masked", REPAIRED)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            ivar = np.where(mask, 0.0, 1.0 / np.square(error)).astype(np.float32)
        mask |= ~np.isfinite(ivar) | (ivar == 0)  # an error so tiny that ivar overflows float32: masked, never inf
        return Spectrum(
            flux=np.where(mask, 0.0, flux).astype(np.float32),
            wavelength=wavelength.astype(np.float32),
            ivar=np.where(mask, 0.0, ivar).astype(np.float32),
            mask=mask,
        )


class _Reporter:
    """Appends issues for one object."""

    def __init__(self, object_id: int, issues: list[Issue]):
        self.object_id, self.issues = object_id, issues

    def __call__(self, field_name: str, reason: str, action: str) -> None:
        self.issues.append(Issue(self.object_id, field_name, reason, action))


def _object_id(row: dict) -> int | None:
    for key in ("object_id", "targetid"):
        value = _as_int(row.get(key))
        if value is not None:
            return value
    return None


def _as_int(value, default: int | None = None) -> int | None:
    if value is None or isinstance(value, bool):
        return default
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)) and np.isfinite(value) and float(value).is_integer():
        return int(value)
    return default


def _redshift(value, report: _Reporter) -> float:
    try:
        redshift = float(value)
    except (TypeError, ValueError):
        redshift = float("nan")
    if not np.isfinite(redshift):
        report("redshift", "missing or not finite", NOTED)
    return redshift


def _sed(value) -> dict[str, float]:
    if not isinstance(value, dict):
        return {}
    return {key: float(item) if item is not None else float("nan") for key, item in value.items() if key.startswith("flux_")}


def _as_2d(value) -> np.ndarray | None:
    try:
        array = np.asarray(value, dtype=np.float32) if not _is_ragged(value) else None
    except (TypeError, ValueError):
        return None
    return array if array is not None and array.ndim == 2 else None


def _is_ragged(value) -> bool:
    if isinstance(value, np.ndarray):
        return value.dtype == object
    return isinstance(value, (list, tuple)) and len({len(item) if hasattr(item, "__len__") else -1 for item in value}) > 1


def _as_1d(value) -> np.ndarray | None:
    if value is None:
        return None
    try:
        array = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        return None
    return array if array.ndim == 1 else None


def _decode_image(value) -> np.ndarray:
    """RGB (H, W, 3) uint8 from a datasets image struct, raw PNG/JPEG bytes, or an array."""
    if isinstance(value, dict):
        value = value.get("bytes")
        if value is None:
            raise ValueError("image struct without bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        try:
            with Image.open(io.BytesIO(bytes(value))) as image:
                return np.asarray(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"cannot decode image bytes: {exc}") from None
    array = np.asarray(value)
    if array.ndim == 3 and array.shape[-1] == 3:
        return array.astype(np.uint8)
    raise ValueError(f"not an RGB image (shape {array.shape})")

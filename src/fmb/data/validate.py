"""Check one input row against the contract and turn it into a `Sample`.

Every problem becomes an `Issue` naming the object and the field, with what was done about it:

* ``skipped``          the object is unusable: no id, an id that does not fit int64, object_id and
  targetid disagreeing, a duplicate of an earlier row's id (found by the full pass, `fmb.data.scan`),
  or no usable modality; it never reaches a model;
* ``modality dropped`` one modality is unusable (wrong spectrum length, differing band sizes, a band
  with too many bad pixels or nothing but zeros, an all-zero spectrum, an RGB image that cannot be
  decoded safely or holds values outside 0-255, ...); the object stays, and stages needing that
  modality skip it;
* ``repaired``         a few bad values were masked (NaN/inf pixels, and values beyond float32, set
  to 0; ivar 0 where the error is zero/negative/NaN or its inverse variance leaves float32), or the
  RGB composite was (re)built from the bands because it was missing or of another size;
* ``noted``            an optional value is missing or unusable (redshift, an SED flux); it is NaN.

What leaves the checker is finite everywhere, in float32 where the `Sample` says so: bands, the
RGB image, and the spectrum's flux, ivar and wavelength. NaN remains only as "unknown" in the
redshift and the SED values. Ids may be negative (the contract's ids are signed int64); int64's
minimum is refused, being the index's missing-id marker.

An image and a spectrum only ever meet inside one `Sample` built from one row, so they cannot be
mis-paired downstream.
"""

from __future__ import annotations

import io
import numbers
import reprlib
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, UnidentifiedImageError

from fmb.config import DataConfig
from fmb.data.schema import (BAND_COLUMNS, LOAD_PROBLEMS, RGB_COLUMN, checked_sky, desi_wavelength, rgb_composite,
                             sky_columns)
from fmb.data.sources.base import ID_COLUMNS, MISSING_ID
from fmb.errors import DataError

SKIPPED, DROPPED, REPAIRED, NOTED = "skipped", "modality dropped", "repaired", "noted"
ACTIONS = (SKIPPED, DROPPED, REPAIRED, NOTED)
_GRID_TOLERANCE_A = 0.5
_FLOAT32_MAX = float(np.finfo(np.float32).max)
_INT64_MAX = int(np.iinfo(np.int64).max)
_EXACT_FLOAT_INT = 2**53  # beyond this a float64 cannot hold every integer, so a float id may be another id
# DESI's redshift fitter puts stars near z = 0 (slightly negative, by their own velocity) and quasars
# up to z ~ 7; a value outside this range is a fill value or a failed fit, not a distance.
REDSHIFT_RANGE = (-0.01, 10.0)


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
    redshift: float  # NaN when unknown
    bands: np.ndarray | None  # (4, H, W) float32 ADU, VIS/Y/J/H
    rgb: np.ndarray | None  # (H, W, 3) uint8, the size of the bands when both are present
    spectrum: Spectrum | None
    sed: dict[str, float] = field(default_factory=dict)  # flux_* values, NaN when unknown


class RowChecker:
    """Validates rows under one `DataConfig` (limits and the skip/error policy)."""

    def __init__(self, config: DataConfig | None = None):
        self.config = config or DataConfig()

    def check(self, row: dict) -> tuple[Sample | None, list[Issue]]:
        """The sample (or None when skipped) and every issue found.

        With ``on_invalid='error'`` a skipped object or dropped modality raises `DataError`.
        """
        identity = _identity(row)
        if isinstance(identity, Issue):
            return self._finish(None, [identity])
        object_id, targetid = identity
        issues: list[Issue] = []
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
            targetid=targetid,
            redshift=_redshift(row.get("redshift"), report),
            bands=bands,
            rgb=rgb,
            spectrum=spectrum,
            sed=_sed(row.get("sed_data"), report),
        )
        _sky_position(row, report)
        return self._finish(sample, issues)

    def skip(self, object_id: int | None, field_name: str, reason: str) -> tuple[None, list[Issue]]:
        """An object skipped for what a single row cannot show (a duplicate id), under the same policy."""
        return self._finish(None, [Issue(object_id, field_name, reason, SKIPPED)])

    def _finish(self, sample: Sample | None, issues: list[Issue]) -> tuple[Sample | None, list[Issue]]:
        if self.config.on_invalid == "error":
            for issue in issues:
                if issue.action in (SKIPPED, DROPPED):
                    raise DataError(f"{issue.reason} ({issue.action})", object_id=issue.object_id, field=issue.field)
        return sample, issues

    # -- images -------------------------------------------------------------------------------
    def _bands(self, row: dict, report: "_Reporter") -> np.ndarray | None:
        arrays = self._band_arrays(row, report)
        if arrays is None:
            return None
        cast = [_float32(array) for array in arrays]
        bands = np.stack([band for band, _ in cast])
        return self._repair_pixels(bands, np.stack([overflow for _, overflow in cast]), report)

    def _band_arrays(self, row: dict, report: "_Reporter") -> list[np.ndarray] | None:
        """The four bands as 2-D float arrays of one accepted size, or None (reported)."""
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
            array = _as_float(row[column], ndim=2)
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
        return arrays

    def _rgb(self, row: dict, bands: np.ndarray | None, report: "_Reporter") -> np.ndarray | None:
        value = row.get(RGB_COLUMN)
        if value is None:
            if bands is None:
                return None
            report(RGB_COLUMN, "missing; built from the H, Y and VIS bands", REPAIRED)
            return _composite(bands)
        try:
            rgb = _decode_image(value, self.config.max_cutout_px)
        except ValueError as exc:
            report(RGB_COLUMN, str(exc), DROPPED)
            return None
        if bands is not None and rgb.shape[:2] != bands.shape[1:]:
            (height, width), (band_height, band_width) = rgb.shape[:2], bands.shape[1:]
            report(RGB_COLUMN, f"size {height}x{width} differs from the bands' {band_height}x{band_width}; "
                   "rebuilt from the H, Y and VIS bands", REPAIRED)
            return _composite(bands)
        return rgb if self._size_ok(rgb.shape[:2], RGB_COLUMN, report) else None

    def _size_ok(self, shape: tuple[int, ...], name: str, report: "_Reporter") -> bool:
        low, high = self.config.min_cutout_px, self.config.max_cutout_px
        if min(shape) < low or max(shape) > high:
            report(name, f"size {shape[0]}x{shape[1]} outside the accepted {low}-{high} px", DROPPED)
            return False
        return True

    def _repair_pixels(self, bands: np.ndarray, overflow: np.ndarray, report: "_Reporter") -> np.ndarray | None:
        """Judged band by band: one dead band spoils the 4-band image even when the others are clean."""
        bad = ~np.isfinite(bands)
        problems = {column: self._band_problem(band, band_bad, band_overflow)
                    for column, band, band_bad, band_overflow in zip(BAND_COLUMNS, bands, bad, overflow)}
        unusable = [column for column, problem in problems.items() if problem]
        if unusable:
            report(", ".join(unusable), f"{_by_problem(problems)}; the 4-band image is dropped", DROPPED)
            return None
        if not bad.any():
            return bands
        where = ", ".join(column for column, band_bad in zip(BAND_COLUMNS, bad) if band_bad.any())
        report("bands", f"{_bad_value_counts(bad, overflow)} pixels set to 0 (in {where})", REPAIRED)
        return np.where(bad, 0.0, bands).astype(np.float32)

    def _band_problem(self, band: np.ndarray, bad: np.ndarray, overflow: np.ndarray) -> str | None:
        """Why this band cannot be used, or None."""
        limit = self.config.max_bad_pixel_fraction
        if bad.mean() > limit:
            counts = _bad_value_counts(bad, overflow)
            return f"{bad.mean():.1%} bad pixels ({counts}), more than the {limit:.0%} allowed"
        if not np.any(band[~bad] != 0):
            return "no non-zero pixel (a dead detector or a blank cutout)"
        return None

    # -- spectrum -----------------------------------------------------------------------------
    def _spectrum(self, value, report: "_Reporter") -> Spectrum | None:
        if value is None:
            report("spectrum", "missing", DROPPED)
            return None
        arrays = {}
        for part in ("flux", "wavelength", "error"):
            array = _as_float(value.get(part) if isinstance(value, dict) else None, ndim=1)
            if array is None:
                report(f"spectrum.{part}", "missing or not a 1-D array of numbers", DROPPED)
                return None
            arrays[part] = array
        expected = self.config.spectrum_length
        for part, array in arrays.items():
            if len(array) != expected:
                report(f"spectrum.{part}", f"length {len(array)}, expected {expected}", DROPPED)
                return None
        wavelength = self._grid(arrays["wavelength"], report)
        if wavelength is None:
            return None
        return self._mask_spectrum(arrays["flux"], wavelength, arrays["error"], report)

    def _grid(self, wavelength: np.ndarray, report: "_Reporter") -> np.ndarray | None:
        """The wavelengths as float32, checked there: the cast can turn a value into inf or two into one."""
        wavelength, _ = _float32(wavelength)
        if not np.all(np.isfinite(wavelength)) or np.any(np.diff(wavelength) <= 0):
            report("spectrum.wavelength", "not finite and strictly increasing (as float32)", DROPPED)
            return None
        if len(wavelength) == len(desi_wavelength()):
            offset = np.max(np.abs(wavelength - desi_wavelength()))
            if offset > _GRID_TOLERANCE_A:
                report("spectrum.wavelength", f"off the DESI grid by up to {offset:.1f} A", DROPPED)
                return None
        return wavelength

    def _mask_spectrum(self, flux, wavelength, error, report: "_Reporter") -> Spectrum | None:
        flux, overflow = _float32(flux)
        bad_flux = ~np.isfinite(flux)
        error = np.asarray(error, dtype=np.float64)
        bad_error = np.isnan(error) | (error <= 0)
        with np.errstate(divide="ignore", over="ignore"):
            ivar = (1.0 / np.square(error)).astype(np.float32)
        # an error so tiny or huge that 1/error^2 leaves float32 (inf, or 0) is masked: never an infinite ivar
        out_of_range = np.isfinite(error) & ~bad_error & ((ivar == 0) | ~np.isfinite(ivar))
        mask = bad_flux | bad_error | out_of_range | np.isposinf(error)  # +inf error = an already-masked pixel
        if mask.mean() > self.config.max_masked_spectrum_fraction:
            report("spectrum", f"{mask.mean():.0%} of pixels masked or invalid", DROPPED)
            return None
        if not np.any(flux[~mask] != 0):
            report("spectrum.flux", "no non-zero flux (a dead fibre or a blank spectrum)", DROPPED)
            return None
        if bad_flux.any():
            report("spectrum.flux", f"{_bad_value_counts(bad_flux, overflow)} fluxes masked", REPAIRED)
        if (bad_error | out_of_range).any():
            counts = _counts([(bad_error, "zero, negative or NaN"),
                              (out_of_range, "tiny or huge (1/error^2 beyond float32)")])
            report("spectrum.error", f"{counts} errors masked", REPAIRED)
        return Spectrum(
            flux=np.where(mask, 0.0, flux).astype(np.float32),
            wavelength=wavelength,
            ivar=np.where(mask, 0.0, ivar).astype(np.float32),
            mask=mask,
        )


class _Reporter:
    """Appends issues for one object."""

    def __init__(self, object_id: int, issues: list[Issue]):
        self.object_id, self.issues = object_id, issues

    def __call__(self, field_name: str, reason: str, action: str) -> None:
        self.issues.append(Issue(self.object_id, field_name, reason, action))


# -- ids ------------------------------------------------------------------------------------------
def row_id(row: dict) -> int | None:
    """The id the index files a row under (object_id, else targetid); None when that one is unusable."""
    for key in ID_COLUMNS:
        if row.get(key) is not None:
            try:
                return _parse_id(row[key])
            except ValueError:
                return None
    return None


def _identity(row: dict) -> tuple[int, int] | Issue:
    """(object_id, targetid), or the skipping issue when the row has no id that can be trusted."""
    ids, problems = {}, {}
    for key in ID_COLUMNS:
        if row.get(key) is not None:
            try:
                ids[key] = _parse_id(row[key])
            except ValueError as exc:
                problems[key] = str(exc)
    known = next(iter(ids.values()), None)  # names the object when one of its ids is readable
    if problems:
        key, problem = next(iter(problems.items()))
        return Issue(known, key, problem, SKIPPED)
    if known is None:
        return Issue(None, "object_id", "missing (and no targetid)", SKIPPED)
    if len(set(ids.values())) > 1:
        # the catalog is matched on object_id == TARGETID and embeddings are keyed by object_id:
        # with two different ids the row's image and spectrum may belong to two objects
        return Issue(known, "object_id, targetid", f"object_id {ids['object_id']} and targetid {ids['targetid']} "
                     "differ; the catalog joins on object_id == TARGETID, so the row may pair two objects", SKIPPED)
    return known, known


def _parse_id(value) -> int:
    """A row id as an int; ValueError saying why when it is not a usable one."""
    if isinstance(value, (float, np.floating)):  # ids read through pandas with nulls arrive as floats
        if not (np.isfinite(value) and float(value).is_integer() and abs(value) <= _EXACT_FLOAT_INT):
            raise ValueError(f"{reprlib.repr(value)} is not a whole number a float holds exactly (|id| <= 2**53)")
        value = int(value)
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"not an integer ({reprlib.repr(value)})")
    value = int(value)  # a Python int: numpy uint64 and big ints never wrap
    if value == MISSING_ID:
        raise ValueError(f"{value} is reserved: int64's minimum marks a missing id")
    if not MISSING_ID < value <= _INT64_MAX:
        raise ValueError(f"{value} does not fit int64")
    return value


# -- scalars --------------------------------------------------------------------------------------
def _number(value) -> float:
    """A real number as a float, NaN when missing (null or NaN); ValueError saying why it is unusable."""
    if value is None:
        return float("nan")
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
        raise ValueError(f"not a number ({reprlib.repr(value)})")
    try:
        number = float(value)
    except OverflowError:  # a Python int too large for any float
        raise ValueError(f"{reprlib.repr(value)} is beyond float range") from None
    if np.isinf(number):
        raise ValueError(f"not finite ({number})")
    return number


def _redshift(value, report: _Reporter) -> float:
    try:
        redshift = _number(value)
    except ValueError as exc:
        report("redshift", f"{exc}; set to NaN", NOTED)
        return float("nan")
    low, high = REDSHIFT_RANGE
    if np.isnan(redshift):
        report("redshift", "missing", NOTED)
    elif not low <= redshift <= high:
        report("redshift", f"{redshift:g} outside the physical range {low:g} to {high:g}; set to NaN", NOTED)
        return float("nan")
    return redshift


def _sky_position(row: dict, report: _Reporter) -> None:
    """A position the index keeps as unknown (`checked_sky`) is noted, so that an export's empty RA
    and Dec can be traced to the row."""
    columns = sky_columns(row)
    if columns is None:
        return
    values = [row.get(column) for column in columns]
    try:
        ra, dec = (_number(value) for value in values)
    except ValueError:  # not a number: unusable as given
        ra = dec = float("inf")
    if np.isnan(ra) and np.isnan(dec):  # no position given: nothing to trace
        return
    if not np.isfinite(checked_sky([ra], [dec])[0][0]):
        report(", ".join(columns), f"{values[0]!r}, {values[1]!r} is not a sky position (0 <= RA < 360, "
               "-90 <= Dec <= 90); position unknown", NOTED)


def _sed(value, report: _Reporter) -> dict[str, float]:
    """The flux_* values; NaN where missing, and noted where present but unusable."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        report("sed_data", f"not a struct of flux_* values ({reprlib.repr(value)}); ignored", NOTED)
        return {}
    return {key: _sed_value(key, item, report) for key, item in value.items()
            if isinstance(key, str) and key.startswith("flux_")}


def _sed_value(key: str, item, report: _Reporter) -> float:
    try:
        number = _number(item)
        if abs(number) > _FLOAT32_MAX:
            raise ValueError(f"{number:g} is beyond float32")
        return number
    except ValueError as exc:
        report(f"sed_data.{key}", f"{exc}; set to NaN", NOTED)
        return float("nan")


# -- arrays ---------------------------------------------------------------------------------------
def _as_float(value, ndim: int) -> np.ndarray | None:
    """A float array of rank `ndim`, or None. float32 input is kept; anything else becomes float64,
    so that values beyond float32 can still be told apart from inf (`_float32`)."""
    if value is None:
        return None
    if isinstance(value, np.ndarray) and value.dtype == np.float32:
        array = value
    else:
        try:
            array = np.asarray(value, dtype=np.float64)
        except (TypeError, ValueError, OverflowError):  # strings, ragged nesting, ints beyond any float
            return None
    return array if array.ndim == ndim else None


def _float32(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """`values` as float32, and where a finite value was beyond float32's range (it became inf)."""
    if values.dtype == np.float32:
        return values, np.zeros(values.shape, dtype=bool)
    with np.errstate(over="ignore"):
        cast = values.astype(np.float32)
    return cast, np.isfinite(values) & ~np.isfinite(cast)


def _bad_value_counts(bad: np.ndarray, overflow: np.ndarray) -> str:
    """'3 NaN/inf and 2 beyond float32' for the bad values of a float32 array (`overflow` within `bad`)."""
    return _counts([(bad & ~overflow, "NaN/inf"), (overflow, "beyond float32")])


def _by_problem(problems: dict[str, str | None]) -> str:
    """'VIS_image, NISP_H_image: <problem>; NISP_Y_image: <another>': bands sharing a problem share its text."""
    columns_of: dict[str, list[str]] = {}
    for column, problem in problems.items():
        if problem:
            columns_of.setdefault(problem, []).append(column)
    return "; ".join(f"{', '.join(columns)}: {problem}" for problem, columns in columns_of.items())


def _counts(parts: list[tuple[np.ndarray, str]]) -> str:
    return " and ".join(f"{int(where.sum())} {label}" for where, label in parts if where.any())


# -- RGB ------------------------------------------------------------------------------------------
def _composite(bands: np.ndarray) -> np.ndarray:
    return rgb_composite(bands[0], bands[1], bands[3])


def _decode_image(value, max_px: int) -> np.ndarray:
    """RGB (H, W, 3) uint8 from a datasets image struct, raw PNG/JPEG bytes, or an array; ValueError
    saying why when it cannot be had safely."""
    if isinstance(value, dict):
        value = value.get("bytes")
        if value is None:
            raise ValueError("image struct without bytes")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return _decode_bytes(bytes(value), max_px)
    return _rgb_array(value)


def _decode_bytes(data: bytes, max_px: int) -> np.ndarray:
    """PIL reads only the header on open: the declared size is checked before any pixel is decoded,
    so a few bytes declaring a huge image (a decompression bomb) never allocate it."""
    with _pil_errors():
        image = Image.open(io.BytesIO(data))
    with image:
        width, height = image.size
        if max(width, height) > max_px:
            raise ValueError(f"declared size {height}x{width} is over the accepted {max_px} px; not decoded")
        with _pil_errors():
            return np.asarray(image.convert("RGB"))


@contextmanager
def _pil_errors() -> Iterator[None]:
    """PIL's bomb check (an error, or a warning below twice its limit) and its decoding failures as ValueError."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            yield
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ValueError(f"a possible decompression bomb, not decoded ({exc})") from None
    except UnidentifiedImageError:  # its message names the buffer's address, not what is wrong
        raise ValueError("cannot decode image bytes: not an image format PIL can identify") from None
    except Exception as exc:  # PIL's decoders raise many types on corrupt bytes (OSError, SyntaxError, zlib.error, ...)
        raise ValueError(f"cannot decode image bytes: {exc}") from None


def _rgb_array(value) -> np.ndarray:
    """An (H, W, 3) array as uint8: integers in 0..255 as they are, floats in [0, 1] scaled by 255 and
    floats in [0, 255] rounded; anything else is refused rather than wrapped around."""
    try:
        array = np.asarray(value)
    except (TypeError, ValueError):  # ragged nesting
        raise ValueError("not an array of numbers") from None
    if array.ndim != 3 or array.shape[-1] != 3 or array.size == 0:
        raise ValueError(f"not an RGB image (shape {array.shape})")
    if array.dtype.kind not in "uif":
        raise ValueError(f"not an array of numbers (dtype {array.dtype})")
    if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
        raise ValueError("RGB values include NaN/inf")
    low, high = array.min(), array.max()
    if low < 0 or high > 255:
        raise ValueError(f"RGB values {low:g} to {high:g} outside 0-255")
    if array.dtype.kind == "f":
        array = np.rint(array * (255 if high <= 1 else 1))
    return array.astype(np.uint8)

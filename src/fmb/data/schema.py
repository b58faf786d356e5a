"""The input-row contract (design §3): constants, the Arrow schema, and row encoders.

Every source (local Parquet, Hugging Face, DESI FITS, the synthetic survey) yields rows of this
shape; `fmb.data.validate` turns a row into a checked `Sample` or a clear rejection.
"""

from __future__ import annotations

import io

import numpy as np
import pyarrow as pa
from PIL import Image

#: DESI coadd grid: 3600-9824 Angstrom in 0.8 Angstrom steps.
SPECTRUM_LENGTH = 7781
WAVELENGTH_MIN = 3600.0
WAVELENGTH_STEP = 0.8

#: Euclid band columns, in wavelength order (VIS, then NISP Y/J/H).
BAND_COLUMNS = ("VIS_image", "NISP_Y_image", "NISP_J_image", "NISP_H_image")
BAND_NAMES = ("VIS", "Y", "J", "H")
RGB_COLUMN = "RGB_image"
#: Optional key a source may add to a row: [(field, reason)] for parts it could not load.
LOAD_PROBLEMS = "_load_problems"

#: Sky position columns a row or a catalog may carry (degrees, ICRS), in the order they are looked
#: for: the row contract's own, DESI's target columns, and the plain upper-case pair.
COORDINATE_COLUMNS = (("ra", "dec"), ("TARGET_RA", "TARGET_DEC"), ("RA", "DEC"))

#: Euclid MER zero points, nJy per ADU (band images are stored in ADU).
ZEROPOINT_NJY_PER_ADU = {"VIS": 2835.34, "Y": 1916.10, "J": 1370.25, "H": 918.35}

_FLOAT_LIST = pa.list_(pa.float32())
_IMAGE_2D = pa.list_(_FLOAT_LIST)
_ENCODED_IMAGE = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
SPECTRUM_TYPE = pa.struct([("flux", _FLOAT_LIST), ("wavelength", _FLOAT_LIST), ("error", _FLOAT_LIST)])
SED_TYPE = pa.struct([(f"flux_{band}", pa.float32()) for band in BAND_NAMES])

ROW_SCHEMA = pa.schema(
    [
        ("object_id", pa.int64()),
        ("targetid", pa.int64()),
        ("redshift", pa.float64()),
        ("ra", pa.float64()),
        ("dec", pa.float64()),
        (RGB_COLUMN, _ENCODED_IMAGE),
        *[(column, _IMAGE_2D) for column in BAND_COLUMNS],
        ("spectrum", SPECTRUM_TYPE),
        ("sed_data", SED_TYPE),
    ]
)


def desi_wavelength() -> np.ndarray:
    """The 7781-pixel DESI wavelength grid in Angstrom (float64)."""
    return WAVELENGTH_MIN + WAVELENGTH_STEP * np.arange(SPECTRUM_LENGTH)


def encode_png(rgb: np.ndarray) -> dict:
    """An (H, W, 3) uint8 array as the struct `datasets` stores images in."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB").save(buffer, format="PNG")
    return {"bytes": buffer.getvalue(), "path": None}


def rgb_composite(vis: np.ndarray, y: np.ndarray, h: np.ndarray, *, softening: float | None = None) -> np.ndarray:
    """Euclid-style colour composite (R=H, G=Y, B=VIS) with a shared asinh stretch, as uint8.

    Bands are in ADU; they are brought to a common flux scale (nJy) first so colours are physical.
    The softening defaults to the noise level (robust sigma of the faint pixels) so that the
    background is dark but not clipped.
    """
    stack = np.stack(
        [h * ZEROPOINT_NJY_PER_ADU["H"], y * ZEROPOINT_NJY_PER_ADU["Y"], vis * ZEROPOINT_NJY_PER_ADU["VIS"]]
    ).astype(np.float64)
    stack = np.nan_to_num(stack, nan=0.0, posinf=0.0, neginf=0.0)
    if softening is None:
        median = np.median(stack)
        softening = max(1.4826 * np.median(np.abs(stack - median)), 1e-6)
    stretched = np.arcsinh(np.clip(stack, 0, None) / softening)
    top = max(np.percentile(stretched, 99.7), 1e-6)
    return (np.clip(stretched / top, 0, 1) * 255).astype(np.uint8).transpose(1, 2, 0)


def make_row(
    *,
    object_id: int,
    bands: np.ndarray | list[np.ndarray] | None,
    flux: np.ndarray | None,
    error: np.ndarray | None,
    redshift: float = float("nan"),
    targetid: int | None = None,
    rgb: np.ndarray | None = None,
    wavelength: np.ndarray | None = None,
    sed: dict[str, float] | None = None,
    ra: float = float("nan"),
    dec: float = float("nan"),
) -> dict:
    """One contract row from arrays. `bands` is (4, H, W) in ADU; the RGB composite is built
    from it when not given; the wavelength defaults to the DESI grid; `ra`, `dec` in degrees (ICRS)."""
    row: dict = {
        "object_id": int(object_id),
        "targetid": int(object_id if targetid is None else targetid),
        "redshift": float(redshift),
        "ra": float(ra),
        "dec": float(dec),
        RGB_COLUMN: None,
        **{column: None for column in BAND_COLUMNS},
        "spectrum": None,
        "sed_data": sed,
    }
    if bands is not None:
        bands = [np.asarray(band, dtype=np.float32) for band in bands]
        for column, band in zip(BAND_COLUMNS, bands):
            row[column] = band
        if rgb is None and len({band.shape for band in bands}) == 1:
            rgb = rgb_composite(bands[0], bands[1], bands[3])
    if rgb is not None:
        row[RGB_COLUMN] = encode_png(rgb)
    if flux is not None:
        wave = desi_wavelength() if wavelength is None else wavelength
        row["spectrum"] = {
            "flux": np.asarray(flux, dtype=np.float32),
            "wavelength": np.asarray(wave, dtype=np.float32),
            "error": np.asarray(error, dtype=np.float32),
        }
    return row


def sky_columns(names) -> tuple[str, str] | None:
    """The (ra, dec) column pair among `names` (`COORDINATE_COLUMNS`, first found), or None."""
    return next(((ra, dec) for ra, dec in COORDINATE_COLUMNS if ra in names and dec in names), None)


def checked_sky(ra, dec) -> tuple[np.ndarray, np.ndarray]:
    """RA and Dec as float64 degrees, NaN (unknown) for both where either is missing, not finite, or
    outside 0 <= RA < 360, -90 <= Dec <= 90: a wrong position is worse than none."""
    ra = np.asarray(ra, dtype=np.float64).copy()
    dec = np.asarray(dec, dtype=np.float64).copy()
    with np.errstate(invalid="ignore"):
        bad = ~(np.isfinite(ra) & np.isfinite(dec) & (ra >= 0) & (ra < 360) & (np.abs(dec) <= 90))
    ra[bad], dec[bad] = np.nan, np.nan
    return ra, dec


def rows_to_table(rows: list[dict]) -> pa.Table:
    """Rows (numpy arrays allowed) as an Arrow table of `ROW_SCHEMA`.

    Images and spectra are handed to Arrow as flat numpy buffers plus offsets (no per-pixel Python
    objects), which is what makes writing large surveys cheap.
    """
    columns = {}
    for field in ROW_SCHEMA:
        values = [row.get(field.name) for row in rows]
        if field.name in BAND_COLUMNS:
            columns[field.name] = _images_2d(values)
        elif field.name == "spectrum":
            columns[field.name] = _spectra(values)
        else:
            columns[field.name] = pa.array(values, type=field.type)
    return pa.table(columns, schema=ROW_SCHEMA)


def _float_lists(arrays: list) -> pa.Array:
    """list<float32> from 1-D arrays (None = null)."""
    present = [np.asarray(a, dtype=np.float32).reshape(-1) for a in arrays if a is not None]
    lengths = np.array([0 if a is None else np.asarray(a).size for a in arrays], dtype=np.int32)
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = pa.array(np.concatenate(present) if present else np.array([], np.float32), type=pa.float32())
    mask = pa.array([a is None for a in arrays])
    return pa.ListArray.from_arrays(offsets, flat, mask=mask)


def _images_2d(images: list) -> pa.Array:
    """list<list<float32>> from 2-D arrays (None = null); ragged lists of rows are kept as given."""
    flats, row_lengths, outer = [], [], [0]
    for image in images:
        if image is None:
            outer.append(outer[-1])
            continue
        if isinstance(image, np.ndarray) and image.ndim == 2:
            flats.append(image.astype(np.float32, copy=False).ravel())
            row_lengths.append(np.full(image.shape[0], image.shape[1]))
        else:
            rows = [np.asarray(row, dtype=np.float32).ravel() for row in image]
            flats.extend(rows)
            row_lengths.append(np.array([len(row) for row in rows]))
        outer.append(outer[-1] + len(row_lengths[-1]))
    lengths = np.concatenate(row_lengths) if row_lengths else np.array([], np.int64)
    inner_offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32))
    flat = pa.array(np.concatenate(flats) if flats else np.array([], np.float32), type=pa.float32())
    inner = pa.ListArray.from_arrays(inner_offsets, flat)
    mask = pa.array([image is None for image in images])
    return pa.ListArray.from_arrays(pa.array(np.asarray(outer, dtype=np.int32)), inner, mask=mask)


def _spectra(spectra: list) -> pa.Array:
    parts = [_float_lists([None if s is None else s.get(name) for s in spectra]) for name in ("flux", "wavelength", "error")]
    mask = pa.array([s is None for s in spectra])
    return pa.StructArray.from_arrays(parts, fields=list(SPECTRUM_TYPE), mask=mask)

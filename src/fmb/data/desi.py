"""Real DESI coadd files: read the B/R/Z arms and merge them onto the 7781-pixel grid.

A DESI coadd stores each arm on its own slice of the common 0.8 Angstrom grid (B 3600-5800,
R 5760-7620, Z 7520-9824), with FLUX, IVAR and a bit MASK per fibre. Where arms overlap the
merged flux is the inverse-variance weighted mean; masked pixels carry no weight; a pixel with
no weight in any arm gets ivar 0 (and error +inf in the row contract, never an infinite ivar).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from astropy.io import fits

from fmb.data.schema import SPECTRUM_LENGTH, WAVELENGTH_MIN, WAVELENGTH_STEP, checked_sky, sky_columns
from fmb.errors import DataError

ARMS = ("B", "R", "Z")


@dataclass(frozen=True)
class CoaddSpectra:
    """Arm-merged spectra of one coadd file, one row per fibre."""

    targetid: np.ndarray  # (n,) int64
    flux: np.ndarray  # (n, 7781) float32
    ivar: np.ndarray  # (n, 7781) float32, 0 where no valid pixel
    objtype: np.ndarray  # (n,) str: 'TGT' for science targets, 'SKY', '' for unassigned...
    ra: np.ndarray | None = None  # (n,) float64 degrees: the fibermap's TARGET_RA (NaN where unusable)
    dec: np.ndarray | None = None  # (n,) float64 degrees: TARGET_DEC

    @property
    def error(self) -> np.ndarray:
        """1/sqrt(ivar); +inf where ivar is 0 (a masked pixel)."""
        with np.errstate(divide="ignore"):
            return np.where(self.ivar > 0, 1.0 / np.sqrt(self.ivar), np.inf).astype(np.float32)


def read_coadd(path: str | Path) -> CoaddSpectra:
    """Read a DESI coadd FITS file and merge its arms by inverse variance."""
    path = Path(path)
    try:
        with fits.open(path, memmap=False) as hdul:
            fibermap = hdul["FIBERMAP"].data
            targetid = np.asarray(fibermap["TARGETID"], dtype=np.int64)
            names = fibermap.columns.names
            objtype = np.asarray(fibermap["OBJTYPE"]).astype(str) if "OBJTYPE" in names else np.full(len(targetid), "TGT")
            position = sky_columns(names)
            ra, dec = checked_sky(fibermap[position[0]], fibermap[position[1]]) if position else (None, None)
            weighted = np.zeros((len(targetid), SPECTRUM_LENGTH))
            weight = np.zeros((len(targetid), SPECTRUM_LENGTH))
            for arm in ARMS:
                _accumulate_arm(hdul, arm, weighted, weight)
    except (OSError, KeyError, TypeError, ValueError) as exc:
        raise DataError(f"cannot read DESI coadd {path.name}: {exc}", field="file") from exc
    with np.errstate(invalid="ignore", divide="ignore"):
        flux = np.where(weight > 0, weighted / weight, 0.0)
    return CoaddSpectra(targetid, flux.astype(np.float32), weight.astype(np.float32), objtype, ra, dec)


def _accumulate_arm(hdul: fits.HDUList, arm: str, weighted: np.ndarray, weight: np.ndarray) -> None:
    wave = np.asarray(hdul[f"{arm}_WAVELENGTH"].data, dtype=np.float64)
    flux = np.asarray(hdul[f"{arm}_FLUX"].data, dtype=np.float64)
    ivar = np.asarray(hdul[f"{arm}_IVAR"].data, dtype=np.float64)
    if f"{arm}_MASK" in hdul:
        ivar = np.where(np.asarray(hdul[f"{arm}_MASK"].data) != 0, 0.0, ivar)
    good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
    ivar = np.where(good, ivar, 0.0)
    flux = np.where(good, flux, 0.0)
    start = int(round((wave[0] - WAVELENGTH_MIN) / WAVELENGTH_STEP))
    if not np.allclose(wave, WAVELENGTH_MIN + WAVELENGTH_STEP * (start + np.arange(len(wave))), atol=0.01):
        raise ValueError(f"arm {arm} is not on the DESI 0.8 A grid")
    if start < 0 or start + len(wave) > SPECTRUM_LENGTH:
        raise ValueError(f"arm {arm} wavelengths {wave[0]:.1f}-{wave[-1]:.1f} fall outside 3600-9824 A")
    weighted[:, start : start + len(wave)] += flux * ivar
    weight[:, start : start + len(wave)] += ivar

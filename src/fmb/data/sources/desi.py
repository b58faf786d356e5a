"""Rows from your own DESI coadd files, paired with Euclid cutouts by TARGETID.

Layout: `data.source = desi:<dir>` holds `coadd-*.fits`; `data.cutouts = <dir>` holds one
`<TARGETID>.fits` per object with image extensions named VIS, NISP_Y, NISP_J, NISP_H (ADU on a
common pixel grid) and optionally `<TARGETID>.png`, the RGB composite (built from H, Y, VIS
otherwise). Only science fibres (OBJTYPE 'TGT', TARGETID > 0) are rows; sky and unassigned fibres
are not objects. A target without a cutout file yields a row without images (recorded by the
checker as a dropped modality), never an image borrowed from another object.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from fmb.data.desi import CoaddSpectra, read_coadd
from fmb.data.schema import LOAD_PROBLEMS, make_row
from fmb.data.sources.base import Source
from fmb.errors import ConfigError, DataError

_CUTOUT_EXTENSIONS = ("VIS", "NISP_Y", "NISP_J", "NISP_H")


class DesiSource(Source):
    def __init__(self, coadd_dir: Path, cutout_dir: Path):
        if not coadd_dir.is_dir():
            raise ConfigError(f"DESI coadd directory {coadd_dir} does not exist")
        if not cutout_dir.is_dir():
            raise ConfigError(f"cutout directory {cutout_dir} does not exist")
        self.coadd_dir, self.cutout_dir = coadd_dir, cutout_dir
        self.description = f"DESI coadds in {coadd_dir} with cutouts from {cutout_dir}"
        self._cached: tuple[str, CoaddSpectra, np.ndarray] | None = None

    def shards(self) -> list[str]:
        return [path.name for path in sorted(self.coadd_dir.glob("coadd-*.fits"))]

    def fingerprint(self) -> dict:
        """Each coadd and cutout file by its size and the sha256 of its first 64 KiB (the FITS headers)."""
        cutouts = [path for path in sorted(self.cutout_dir.iterdir()) if path.is_file()]
        return {"kind": "desi",
                "coadds": {shard: _head_sha256(self.coadd_dir / shard) for shard in self.shards()},
                "cutouts": {path.name: _head_sha256(path) for path in cutouts}}

    def read_ids(self, shard: str) -> np.ndarray:
        _, spectra, science = self._spectra(shard)
        return spectra.targetid[science]

    def read_coordinates(self, shard: str) -> tuple[np.ndarray, np.ndarray] | None:
        """The fibermap's TARGET_RA, TARGET_DEC of the science fibres."""
        _, spectra, science = self._spectra(shard)
        return None if spectra.ra is None else (spectra.ra[science], spectra.dec[science])

    def read_rows(self, shard: str, rows: Sequence[int]) -> list[dict]:
        _, spectra, fibres = self._spectra(shard)
        return [self._row(spectra, int(fibres[row])) for row in rows]

    def iter_rows(self, shard: str, batch_size: int = 256) -> Iterator[list[dict]]:
        count = len(self._spectra(shard)[2])
        for start in range(0, count, batch_size):
            yield self.read_rows(shard, range(start, min(start + batch_size, count)))

    def _spectra(self, shard: str) -> tuple[str, CoaddSpectra, np.ndarray]:
        if self._cached is None or self._cached[0] != shard:
            spectra = read_coadd(self.coadd_dir / shard)
            science = np.flatnonzero((spectra.objtype == "TGT") & (spectra.targetid > 0))
            self._cached = (shard, spectra, science)
        return self._cached

    def _row(self, spectra: CoaddSpectra, fibre: int) -> dict:
        targetid = int(spectra.targetid[fibre])
        problems = []
        try:
            bands = self._cutout(targetid)
        except DataError as exc:  # a bad cutout drops this object's image, not the whole batch
            bands, problems = None, [(exc.field, exc.reason)]
        rgb_path = self.cutout_dir / f"{targetid}.png"
        rgb = _read_png(rgb_path) if rgb_path.is_file() else None
        position = {} if spectra.ra is None else {"ra": spectra.ra[fibre], "dec": spectra.dec[fibre]}
        row = make_row(object_id=targetid, bands=bands, rgb=rgb, flux=spectra.flux[fibre], error=spectra.error[fibre],
                       **position)
        row[LOAD_PROBLEMS] = problems
        return row

    def _cutout(self, targetid: int) -> list[np.ndarray] | None:
        path = self.cutout_dir / f"{targetid}.fits"
        if not path.is_file():
            return None
        try:
            with fits.open(path, memmap=False) as hdul:
                missing = [name for name in _CUTOUT_EXTENSIONS if name not in hdul]
                if missing:
                    raise DataError(f"lacks extensions {', '.join(missing)} (needs {', '.join(_CUTOUT_EXTENSIONS)})",
                                    field=path.name)
                return [np.asarray(hdul[name].data, dtype=np.float32) for name in _CUTOUT_EXTENSIONS]
        except (OSError, ValueError, TypeError) as exc:
            raise DataError(f"unreadable: {exc}", field=path.name) from None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


_HEADER_BYTES = 64 << 10  # a FITS file starts with its primary header: hash that and a little more, not the data


def _head_sha256(path: Path) -> str:
    """'<size>:<sha256 of the first 64 KiB>': a rewritten header or a resized file changes it."""
    with open(path, "rb") as handle:
        return f"{path.stat().st_size}:{hashlib.sha256(handle.read(_HEADER_BYTES)).hexdigest()}"

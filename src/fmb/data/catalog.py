"""The optional object catalog (redshift, stellar mass, SFR, spectral type, sky position) for probes,
colouring and the app.

A FITS or Parquet table with a `TARGETID` column, matched on ``object_id == TARGETID``. Its path is
``data.catalog`` or, when unset, the source's own (``<source>/catalog.parquet`` for Parquet
directories and the synthetic survey).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fmb.config import ResolvedConfig
from fmb.data.schema import checked_sky, sky_columns
from fmb.errors import DataError, FmbError

ID_COLUMN = "TARGETID"


def catalog_path(config: ResolvedConfig) -> Path | None:
    if config.data.catalog:
        return config.path(config.data.catalog)
    from fmb.data.sources import open_source

    return open_source(config).default_catalog()


def load_catalog(config: ResolvedConfig, *, required: bool = True) -> pd.DataFrame | None:
    """The catalog indexed by ``object_id`` (int64), or None when there is none and it is optional."""
    path = catalog_path(config)
    if path is None or not path.is_file():
        if required:
            raise FmbError(f"no catalog found{f' at {path}' if path else ''}: set data.catalog to a FITS or Parquet "
                           f"table with {ID_COLUMN}, Z, LOGM, LOGSFR")
        return None
    return read_catalog(path)


def read_catalog(path: Path) -> pd.DataFrame:
    if path.suffix.lower() in (".fits", ".fit", ".fits.gz"):
        from astropy.table import Table

        table = Table.read(path)
        frame = table[[c for c in table.colnames if table[c].ndim == 1]].to_pandas()
    else:
        frame = pd.read_parquet(path)
    if ID_COLUMN not in frame.columns:
        raise DataError(f"catalog {path} has no {ID_COLUMN} column", field=ID_COLUMN)
    ids = frame.pop(ID_COLUMN).to_numpy()
    duplicated = pd.Series(ids).duplicated().to_numpy()
    if duplicated.any():
        raise DataError(f"catalog {path}: {ID_COLUMN} {int(ids[duplicated][0])} appears more than once",
                        object_id=int(ids[duplicated][0]), field=ID_COLUMN)
    frame.index = pd.Index(ids.astype(np.int64), name="object_id")
    return frame


def catalog_coordinates(frame: pd.DataFrame | None) -> pd.DataFrame:
    """The catalog's sky positions (ra, dec in degrees, by object_id; checked, NaN where unusable) from
    its first pair of `fmb.data.schema.COORDINATE_COLUMNS`; empty when it has none."""
    columns = None if frame is None else sky_columns(frame.columns)
    if columns is None:
        return pd.DataFrame({"ra": [], "dec": []}, index=pd.Index([], dtype=np.int64, name="object_id"))
    ra, dec = checked_sky(frame[columns[0]].to_numpy(np.float64), frame[columns[1]].to_numpy(np.float64))
    return pd.DataFrame({"ra": ra, "dec": dec}, index=frame.index)

"""The optional object catalog (redshift, stellar mass, SFR, spectral type) for probes and colouring.

A FITS or Parquet table with a `TARGETID` column, matched on ``object_id == TARGETID``. Its path is
``data.catalog`` or, when unset, the source's own (``<source>/catalog.parquet`` for Parquet
directories and the synthetic survey).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from fmb.config import ResolvedConfig
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

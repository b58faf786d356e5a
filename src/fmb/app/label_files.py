"""Reading a file of labels for `fmb labels import` (`fmb.app.labels.imported_rows` checks each row):
CSV, Parquet, FITS or VOTable, as `fmb export` writes them or as a person or another tool does."""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd
import pyarrow as pa

from fmb.app.labels import COLUMNS
from fmb.errors import FmbError

IMPORT_SUFFIXES = (".csv", ".parquet", ".fits", ".fit", ".vot", ".xml")
INTEGER = re.compile(r"\s*[+-]?\d+\s*")


def read_label_file(path: Path) -> pd.DataFrame:
    """A file of labels as a frame: CSV, Parquet, or a FITS or VOTable table (`fmb export` writes all
    but Parquet); a FITS export's text is UTF-8 bytes, read back as text. An interest below 0 is an
    export's mark of "no interest" (`fmb.app.export`)."""
    suffix = path.suffix.lower()
    if suffix not in IMPORT_SUFFIXES:
        raise FmbError(f"{path}: labels import from {', '.join(IMPORT_SUFFIXES)}, not "
                       f"{path.suffix or 'a file without suffix'}")
    try:
        if suffix == ".csv":  # ids as text, parsed exactly below: a float would round 17-digit ids
            frame = pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        else:
            frame = _astropy_table(path)
    except (OSError, ValueError, TypeError, pa.ArrowException) as error:
        raise FmbError(f"{path}: cannot read labels: {str(error).splitlines()[0] if str(error) else type(error).__name__}") \
            from None
    frame = frame.rename(columns=lambda column: column.lower() if column.lower() in COLUMNS else column)  # TOPCAT's
    missing = [column for column in ("object_id", "interest") if column not in frame.columns]
    if missing:
        raise FmbError(f"{path}: no {' or '.join(missing)} column (a label file has object_id, interest and "
                       "optionally tags and note)")
    if "user" in frame.columns and "tags" in frame.columns:  # an export: its unlabelled rows carry no label
        frame = frame[frame["user"].fillna("").astype(str) != ""]
    frame = frame.assign(object_id=frame["object_id"].map(_id_text))
    numeric = pd.to_numeric(frame["interest"], errors="coerce")
    # text that is no number stays as it is, for `_label` to refuse naming its row and object
    return frame.assign(interest=numeric.where(~(numeric < 0)).astype(object).where(numeric.notna(), frame["interest"]))


def _id_text(value):
    """A CSV's id text: an integer's digits exactly; other number text (3.0, 3.96e16) as the float it
    is, which `_integer` takes when whole and exact, and refuses beyond 2^53; anything else as is."""
    if not isinstance(value, str):
        return value
    if INTEGER.fullmatch(value):
        return int(value)
    try:
        return float(value)
    except ValueError:
        return value


def _astropy_table(path: Path) -> pd.DataFrame:
    """A FITS or VOTable table's one-dimensional columns; byte strings decoded as UTF-8."""
    from astropy.table import Table

    table = Table.read(path, format="fits" if path.suffix.lower() in (".fits", ".fit") else "votable")
    frame = table[[name for name in table.colnames if table[name].ndim == 1]].to_pandas()
    for name in frame.columns:
        if frame[name].dtype == object:
            frame[name] = frame[name].map(lambda value: value.decode() if isinstance(value, bytes) else value)
    return frame

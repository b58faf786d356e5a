"""Candidates leave fmb in the formats astronomers use: a run's labelled objects and the top of a
ranking, with ids, sky positions, every model's headline score and rank, and their labels (interest,
tags, note, who and when), as FITS, VOTable or CSV (astropy writes all three); on request each
object's cutouts and spectrum as one FITS file (`fmb export --objects`, `write_object_files`).

The same table is what the app offers to download and sends over SAMP (`fmb.app.samp`), and what
`fmb labels import` reads back (object_id, interest, tags, note): labels survive the round trip.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from fmb.app.labels import INTERESTING, TAG_SEPARATOR
from fmb.app.rerank import ranking_name
from fmb.errors import FmbError
from fmb.io import atomic_path
from fmb.layout import owner_marker

TOP_DEFAULT = 100
TOP_MAX = 100_000
#: VOTable's UCDs say which columns are the position: TOPCAT and Aladin plot them without asking.
UCDS = {"object_id": "meta.id;meta.main", "ra": "pos.eq.ra;meta.main", "dec": "pos.eq.dec;meta.main",
        "redshift": "src.redshift"}
#: The cutout extensions of an object file: the names `data.cutouts` files carry (`fmb.data.sources.desi`).
CUTOUT_EXTENSIONS = ("VIS", "NISP_Y", "NISP_J", "NISP_H")
# DESI's flux unit and its inverse variance's, in the FITS standard's spelling (a bare 1e-17 factor
# is not FITS: astropy reads it with a warning and drops the unit)
FLUX_UNIT, IVAR_UNIT = "10**(-17) erg/(s cm2 Angstrom)", "10**(34) s2 cm4 Angstrom2 / erg2"


@dataclass(frozen=True)
class ExportFormat:
    astropy: str  # astropy's name for the format
    media_type: str


EXPORT_FORMATS = {"fits": ExportFormat("fits", "application/fits"),
                  "vot": ExportFormat("votable", "application/x-votable+xml"),
                  "csv": ExportFormat("ascii.csv", "text/csv"),
                  "reg": ExportFormat("", "text/plain")}  # a DS9 region file (`ds9_regions`)
REGION_RADIUS_ARCSEC = 2.0  # a circle about a galaxy's size, marking it on an image without hiding it


def candidate_table(tables: dict, model: str, column: str, top: int, labels: pd.DataFrame,
                    coordinates: pd.DataFrame, catalog):
    """An astropy Table, one row per object labelled (`labels`: `LabelStore.current()`) or among the
    `top` of `tables[model]`'s ranking by `column`, in that ranking's order (objects it does not rank
    last): object_id, ra, dec, redshift (when the catalog has one), each model's headline score and
    rank, in_top, and the label."""
    from astropy import units as u
    from astropy.table import Table

    order = tables[model].order(column)
    chosen = order["object_id"].to_numpy()[:top]
    ids = pd.unique(np.concatenate([chosen, labels["object_id"].to_numpy(np.int64)]))
    ranks = tables[model].ranks(column).reindex(ids).to_numpy(np.float64)
    ids = ids[np.argsort(np.where(np.isnan(ranks), np.inf, ranks), kind="stable")]
    position = coordinates.reindex(ids)
    table = Table({"object_id": ids.astype(np.int64), "ra": position["ra"].to_numpy(np.float64),
                   "dec": position["dec"].to_numpy(np.float64)})
    table["ra"].unit = table["dec"].unit = u.deg
    if catalog.redshift is not None:
        table["redshift"] = catalog.column(catalog.redshift, pd.Series(ids)).astype(np.float64)
    for name, scores in tables.items():
        table[f"score_{name}"] = scores.frame[scores.default].reindex(ids).to_numpy(np.float64)
        table[f"rank_{name}"] = scores.ranks(scores.default).reindex(ids).fillna(-1).to_numpy(np.int64)
        table[f"rank_{name}"].description = f"rank by {scores.default} (1 = most anomalous; -1: not ranked)"
    table["rank"] = tables[model].ranks(column).reindex(ids).fillna(-1).to_numpy(np.int64)
    table["rank"].description = f"rank by the exported ranking, {ranking_name(model, column)} (-1: not ranked)"
    table["in_top"] = np.isin(ids, chosen)
    _add_labels(table, labels.set_index("object_id").reindex(ids))
    for name, ucd in UCDS.items():
        if name in table.colnames:
            table[name].meta["ucd"] = ucd
    table.meta.update({"ranking": ranking_name(model, column), "top": int(top)})
    return table


def _add_labels(table, labels: pd.DataFrame) -> None:
    """interest (-1: none), tags (joined by ';'), note, user, labelled_at (unix time; NaN: not labelled)."""
    table["interest"] = labels["interest"].astype("Float64").fillna(-1).to_numpy(np.int64)
    table["interest"].description = "0-5, -1 where the object has no interest label"
    table["tags"] = np.array([TAG_SEPARATOR.join(tags) if isinstance(tags, list) else "" for tags in labels["tags"]],
                             dtype=str)
    table["note"] = np.array(labels["note"].fillna("").tolist(), dtype=str)  # text columns, not objects
    table["user"] = np.array(labels["user"].fillna("").tolist(), dtype=str)
    table["labelled_at"] = labels["time"].to_numpy(np.float64)


def export_bytes(table, suffix: str) -> bytes:
    """`table` as the bytes of a file in format `suffix` (fits, vot, csv). FITS text columns hold
    UTF-8 bytes (a note may be any text; FITS tables have no other way to hold it)."""
    if suffix not in EXPORT_FORMATS:
        raise FmbError(f"export as {', '.join('.' + name for name in EXPORT_FORMATS)}, not .{suffix}")
    if suffix == "reg":
        return ds9_regions(table).encode()
    if suffix == "fits":
        table = table.copy()
        for name in table.colnames:
            if table[name].dtype.kind == "U":
                table[name] = np.char.encode(np.asarray(table[name]), "utf-8")
    buffer = io.StringIO() if suffix == "csv" else io.BytesIO()
    table.write(buffer, format=EXPORT_FORMATS[suffix].astropy)
    value = buffer.getvalue()
    return value.encode() if isinstance(value, str) else value


def ds9_regions(table) -> str:
    """The objects of `table` as a DS9 region file (fk5 circles; SAOImage DS9, Aladin and astropy's
    `regions` read it), each labelled with its id and rank: red where labelled interesting, green
    otherwise; the rank is by the exported ranking. Objects without a known position are left out,
    said in the header."""
    known = np.isfinite(np.asarray(table["ra"], np.float64)) & np.isfinite(np.asarray(table["dec"], np.float64))
    lines = ["# Region file format: DS9 version 4.1",
             f"# fmb candidates: {table.meta.get('ranking', '')}, top {table.meta.get('top', '')} and the labelled "
             f"objects; {int((~known).sum())} without a known position left out",
             'global color=green font="helvetica 10 normal"', "fk5"]
    for row in table[known]:
        interesting = "interest" in table.colnames and row["interest"] >= INTERESTING
        number = f" #{row['rank']}" if row["rank"] > 0 else ""
        lines.append(f'circle({row["ra"]:.7f},{row["dec"]:+.7f},{REGION_RADIUS_ARCSEC:g}") # '
                     f"text={{{int(row['object_id'])}{number}}}" + (" color=red" if interesting else ""))
    return "\n".join(lines) + "\n"


def write_export(table, path: Path) -> Path:
    """`table` written to `path` in the format its suffix names (.fits, .vot, .csv, .reg), atomically."""
    data = export_bytes(table, path.suffix.lstrip(".").lower())
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)
    return path


def write_object_files(fetcher, table, directory: Path) -> int:
    """One FITS file per object of `table`, <object_id>.fits in `directory`: a primary header with
    its id, position and redshift, its band cutouts (ADU) as image extensions, and its spectrum as a
    SPECTRUM table (WAVELENGTH in A, FLUX in 1e-17 erg/s/cm2/A, IVAR). Returns the files written.
    A folder fmb made (its owner marker) keeps only this export's files: an earlier, longer export's
    would else pass for candidates of this one."""
    from astropy.io import fits

    if not directory.exists():
        directory.mkdir(parents=True)
        owner_marker(directory).touch()
    written, names = 0, set()
    for row, sample in zip(table, fetcher.samples(table["object_id"])):
        if sample is None:
            continue
        header = fits.Header({"OBJ_ID": int(row["object_id"]), "Z": _finite(sample.redshift),
                              "RA": _finite(row["ra"]), "DEC": _finite(row["dec"])})
        units = [fits.PrimaryHDU(header=header)]
        if sample.bands is not None:
            units += [fits.ImageHDU(band, name=name) for name, band in zip(CUTOUT_EXTENSIONS, sample.bands)]
        if sample.spectrum is not None:
            spectrum = sample.spectrum
            units.append(fits.BinTableHDU.from_columns(
                [fits.Column("WAVELENGTH", "E", unit="Angstrom", array=spectrum.wavelength),
                 fits.Column("FLUX", "E", unit=FLUX_UNIT, array=spectrum.flux),
                 fits.Column("IVAR", "E", unit=IVAR_UNIT, array=spectrum.ivar)],
                name="SPECTRUM"))
        buffer = io.BytesIO()
        fits.HDUList(units).writeto(buffer)
        name = f"{int(row['object_id'])}.fits"
        names.add(name)
        with atomic_path(directory / name) as temporary:
            temporary.write_bytes(buffer.getvalue())
        written += 1
    if owner_marker(directory).is_file():
        for stale in directory.glob("*.fits"):
            if stale.name not in names and stale.stem.lstrip("-").isdigit():
                stale.unlink()
    return written


def _finite(value) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None


def export_run(config, out: Path, model: str | None = None, column: str | None = None, top: int = TOP_DEFAULT,
               objects: bool = False) -> dict:
    """`fmb export`: the run's candidate table to `out` (its suffix names the format), and with
    `objects` each object's cutouts and spectrum to <out without suffix>-objects/<id>.fits."""
    from fmb.app.labels import COLUMNS, LabelStore
    from fmb.app.tables import Catalog, chosen_column, chosen_model, load_tables
    from fmb.data.catalog import load_catalog
    from fmb.data.sky import object_coordinates
    from fmb.data.tasks import open_fetcher

    suffix = out.suffix.lstrip(".").lower()
    if suffix not in EXPORT_FORMATS:
        raise FmbError(f"{out}: export as {', '.join('.' + name for name in EXPORT_FORMATS)}, not "
                       f"{out.suffix or 'a file without suffix'}")
    if not 0 <= top <= TOP_MAX:
        raise FmbError(f"--top must be 0 to {TOP_MAX}, got {top}")
    tables = load_tables(config)
    model = chosen_model(tables, model)
    column = chosen_column(tables[model], column)
    database = config.layout.app.labels_db
    labels = LabelStore(database).current() if database.is_file() else pd.DataFrame(columns=list(COLUMNS))
    catalog = load_catalog(config, required=False)
    fetcher = open_fetcher(config)
    table = candidate_table(tables, model, column, top, labels, object_coordinates(fetcher.index, catalog),
                            Catalog(catalog))
    write_export(table, out)
    done = {"path": out, "objects": len(table), "labelled": int((table["user"] != "").sum()),
            "ranking": table.meta["ranking"]}
    if objects:
        directory = out.with_name(f"{out.stem}-objects")
        done["object_files"] = write_object_files(fetcher, table, directory)
        done["objects_dir"] = directory
    return done


def import_run_labels(config, path: Path, user: str | None = None) -> int:
    """`fmb labels import`: the file's labels merged into the run's label log, each object checked
    against the run's survey when the run has indexed one; returns the labels imported."""
    from fmb.app.labels import LabelStore, imported_rows
    from fmb.data.index import ObjectIndex

    known = set(ObjectIndex.load(config.layout.data.dir).ids.tolist()) if config.layout.data.index.is_file() else None
    rows = imported_rows(path, user, known)  # checked before the label log is opened (or created)
    return LabelStore(config.layout.app.labels_db).append_imported(rows)

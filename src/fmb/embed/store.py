"""Embedding storage (design §3): Parquet parts + a manifest, and the original `.pt` format.

`runs/<name>/embeddings/<model>/part-NNNNN.parquet` holds `object_id` and one fixed-size float32
list column per modality. `signature.json` records what made them (model, weights sha256 and hub
commit, preprocessing, pooling, layer, dims, the work-unit plan, the data's fingerprint); beside
each part, `part-NNNNN.json` records its row count, sha256 and the objects skipped. A part is
written under a temporary name and renamed, then its record: a run killed in between redoes that
unit, never duplicates or drops it, and workers embedding other units at the same time never touch
it. `manifest.json` merges the records once every unit is done; it is what readers load.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fmb import __version__
from fmb.errors import FmbError
from fmb.io import read_json_object, write_json, write_table, write_torch
from fmb.layout import EmbeddingFiles
from fmb.models.base import MODALITIES, covariate_key, file_sha256, residual_key


def embedded_models(config) -> list[str]:
    """The run's models (`run.models`, in that order) that have finished embeddings, and no others:
    a model dropped from the run is not analysed again because its old directory is still there."""
    return [model for model in config.run.models if config.layout.embeddings(model).manifest.is_file()]


def embedding_manifests(config) -> list[Path]:
    """The manifest of every model of `run.models` (present or not): what stages reading embeddings
    fingerprint, since a manifest holds each part's checksum."""
    return [config.layout.embeddings(model).manifest for model in config.run.models]


@dataclass
class Manifest:
    """The parts of one embedding directory and what made them.

    Each finished unit writes its own small record (`part-NNNNN.json`) beside its part, so workers
    embedding different units at once (processes, SLURM array tasks) never overwrite each other's
    bookkeeping. `merge` writes `manifest.json` from the records once every unit is done: readers
    take that file as "these embeddings are complete", and downstream stages fingerprint it.
    """

    directory: Path
    signature: dict
    parts: dict[str, dict]

    @classmethod
    def open(cls, directory: Path, signature: dict) -> "Manifest":
        """The manifest of `directory`, new if absent; refuses to mix parts made differently."""
        files = EmbeddingFiles(directory)
        merged = read_manifest(files.manifest) if files.manifest.is_file() else None
        recorded = _read_json(files.signature) if files.signature.is_file() else (merged or {}).get("signature")
        if recorded is not None:
            _refuse_changes(directory, recorded, signature)
        else:
            write_json(signature, files.signature)
        parts = dict((merged or {}).get("parts", {}))
        parts.update({str(record["unit"]): record for record in map(_read_json, files.unit_records())})
        return cls(directory, signature, parts)

    def is_done(self, unit_id: int) -> bool:
        entry = self.parts.get(str(unit_id))
        path = EmbeddingFiles(self.directory).part(unit_id)
        return entry is not None and path.is_file() and pq.read_metadata(path).num_rows == entry["rows"]

    def add(self, unit_id: int, rows: int, skipped: list[dict]) -> None:
        """Record a unit whose part is written (the part first: a kill in between redoes the unit)."""
        files = EmbeddingFiles(self.directory)
        entry = {"unit": unit_id, "file": files.part(unit_id).name, "rows": rows, "sha256": file_sha256(files.part(unit_id)),
                 "skipped": skipped}
        write_json(entry, files.unit_record(unit_id))
        self.parts[str(unit_id)] = entry

    def merge(self) -> Path:
        """Write `manifest.json`: the signature and every unit's record."""
        ordered = dict(sorted(self.parts.items(), key=lambda item: int(item[0])))
        return write_json({"signature": self.signature, "fmb_version": __version__, "parts": ordered},
                          EmbeddingFiles(self.directory).manifest)

    @property
    def total_rows(self) -> int:
        return sum(entry["rows"] for entry in self.parts.values())


def _refuse_changes(directory: Path, recorded: dict, signature: dict) -> None:
    changed = sorted(k for k in set(signature) | set(recorded) if signature.get(k) != recorded.get(k))
    if "data_sha256" in changed:
        raise FmbError(f"{directory} holds embeddings of other data: the input data changed after this run "
                       "began, and resuming would mix two versions; use another run name, or --force to "
                       "embed everything again")
    if changed:
        raise FmbError(f"{directory} holds embeddings made differently ({', '.join(changed)} changed); "
                       "use another run name or delete that directory to start over")


def _read_json(path: Path) -> dict:
    return read_json_object(path, "embed this model again with --force")


def part_schema(dims: dict[str, int], residuals: tuple[str, ...] = (), covariates: tuple[str, ...] = ()) -> pa.Schema:
    """The columns of every part of one run: `object_id`, a fixed-size float32 list per modality of
    `dims` ({modality: width}), a float32 residual for each modality of `residuals` and a float32
    column for each nuisance covariate (`covariate_key`)."""
    fields = [pa.field("object_id", pa.int64())]
    for modality in MODALITIES:
        if modality in dims:
            fields.append(pa.field(modality, pa.list_(pa.float32(), int(dims[modality]))))
        if modality in residuals:
            fields.append(pa.field(residual_key(modality), pa.float32()))
    fields.extend(pa.field(covariate_key(name), pa.float32()) for name in covariates)
    return pa.schema(fields)


def read_manifest(path: Path) -> dict:
    """A `manifest.json`, or a one-line error saying it is unreadable and what to do."""
    data = _read_json(path)
    if not isinstance(data.get("parts"), dict):
        raise FmbError(f"{path} is corrupt (no parts table); embed this model again with --force")
    return data


def write_part(path: Path, object_ids: np.ndarray, embeddings: dict[str, np.ndarray],
               schema: pa.Schema | None = None) -> Path:
    """One part in `schema` (default: the columns `embeddings` has). A unit in which no object was
    usable still gets every column, empty, so parts of a run always concatenate."""
    if schema is None:
        prefix = covariate_key("")
        schema = part_schema({m: v.shape[1] for m, v in embeddings.items() if m in MODALITIES},
                             tuple(m for m in MODALITIES if residual_key(m) in embeddings),
                             tuple(key[len(prefix):] for key in embeddings if key.startswith(prefix)))
    ids = np.asarray(object_ids, dtype=np.int64)
    columns = [pa.array(ids)]
    for field in list(schema)[1:]:
        values = embeddings.get(field.name)
        if values is None and len(ids):
            raise FmbError(f"{path}: the model gave no {field.name} for {len(ids)} objects")
        columns.append(_column(values, field))
    return write_table(pa.Table.from_arrays(columns, schema=schema), path, compression="zstd")


def _column(values: np.ndarray | None, field: pa.Field) -> pa.Array:
    if not pa.types.is_fixed_size_list(field.type):
        return pa.array(np.asarray(values if values is not None else [], dtype=np.float32).reshape(-1))
    width = field.type.list_size
    matrix = np.ascontiguousarray(values if values is not None else np.zeros((0, width)), dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != width:
        raise FmbError(f"{field.name} embeddings have shape {matrix.shape}, expected (N, {width})")
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), width)


def import_signature(model: str, path: Path | None, directory: Path | None = None) -> dict | None:
    """The signature of embeddings of `model` imported from the file `path` (its name and sha256);
    with `directory` instead, the signature its finished embeddings were imported with (None when
    they were not imported, or are not finished)."""
    if path is not None:
        return {"model": model, "imported_from": str(path), "imported_sha256": file_sha256(path)}
    manifest = EmbeddingFiles(directory).manifest
    if not manifest.is_file():
        return None
    try:
        recorded = read_manifest(manifest).get("signature") or {}
    except FmbError:
        return None
    return recorded if "imported_sha256" in recorded else None


def write_embeddings(directory: Path, signature: dict, object_ids: np.ndarray, embeddings: dict[str, np.ndarray]) -> int:
    """Embeddings made elsewhere (an import, a test's own vectors) as one complete part; the count."""
    manifest = Manifest.open(directory, signature)
    write_part(EmbeddingFiles(directory).part(0), object_ids, embeddings)
    manifest.add(0, len(object_ids), [])
    manifest.merge()
    return len(object_ids)


def load_embeddings(directory: Path, modalities: tuple[str, ...] = MODALITIES) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(object ids, {modality: (N, D) float32}) from the parts listed in the manifest, in unit order."""
    ids, out, _ = load_embeddings_and_residuals(directory, modalities)
    return ids, out


def embedded_ids(directory: Path) -> np.ndarray:
    """The object ids of a model's finished embedding parts, reading no embedding."""
    ids = [read_part(part.path, {"object_id"}).column("object_id").to_numpy() for part in embedding_parts(directory)]
    return np.concatenate(ids) if ids else np.array([], np.int64)


def load_embeddings_and_residuals(directory: Path, modalities: tuple[str, ...] = MODALITIES
                                  ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`load_embeddings` plus {modality: (N,) float64} of the residuals the model gave (`residual_key`)."""
    # a unit in which no object was usable adds nothing (parts written before every part carried
    # the full schema held only object_id, which would not concatenate)
    tables = [table for table in (read_part(part.path) for part in embedding_parts(directory)) if table.num_rows]
    if not tables:
        return np.array([], np.int64), {}, {}
    ids, out, residuals = part_arrays(pa.concat_tables(tables), modalities)
    refuse_duplicates(directory, ids)
    return ids, out, residuals


def load_covariates(directory: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(object ids, {covariate: (N,) float64}) of the nuisance covariates the model stored beside its
    embeddings (`covariate_key` columns; none for most models), in unit order."""
    prefix = covariate_key("")
    ids, columns = [], {}
    for part in embedding_parts(directory):
        names = [name for name in pq.read_schema(part.path).names if name.startswith(prefix)]
        table = read_part(part.path, {"object_id", *names})
        ids.append(table.column("object_id").to_numpy())
        for name in names:
            columns.setdefault(name[len(prefix):], []).append(table.column(name).to_numpy().astype(np.float64))
    return (np.concatenate(ids) if ids else np.array([], np.int64)), {k: np.concatenate(v) for k, v in columns.items()}


@dataclass(frozen=True)
class Part:
    unit: int
    path: Path
    rows: int


def embedding_parts(directory: Path) -> list[Part]:
    """The parts of a finished embedding directory, in unit order, from its manifest: what readers
    stream one at a time, so that memory holds one part, not every embedding."""
    path = EmbeddingFiles(directory).manifest
    if not path.is_file():
        raise FmbError(f"no embeddings in {directory}; run `fmb embed` first")
    manifest = read_manifest(path)
    return [Part(int(unit), directory / entry["file"], int(entry["rows"]))
            for unit, entry in sorted(manifest["parts"].items(), key=lambda kv: int(kv[0]))]


def read_rows(parts: list[Part], positions: np.ndarray, modalities: tuple[str, ...] = MODALITIES
              ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """`part_arrays` of the objects at these global row positions (sorted) of the parts, reading one
    part at a time and only the columns of `modalities`: memory holds the chosen rows, not every
    embedding."""
    tables, offset = [], 0
    for part in parts:
        inside = positions[(positions >= offset) & (positions < offset + part.rows)] - offset
        if len(inside):
            wanted = {"object_id", *modalities, *(residual_key(m) for m in modalities)}
            tables.append(read_part(part.path, wanted).take(inside))
        offset += part.rows
    if not tables:
        return np.array([], np.int64), {}, {}
    return part_arrays(pa.concat_tables(tables), modalities)


def read_part(path: Path, columns: set[str] | None = None) -> pa.Table:
    """An embedding part, checked against its manifest's sha256 (`verify_part`); only those of
    `columns` it has, when given."""
    try:
        verify_part(path)
        if columns is not None:
            columns = [name for name in pq.read_schema(path).names if name in columns]
        return pq.read_table(path, columns=columns)
    except (OSError, pa.ArrowException) as error:
        raise FmbError(f"embedding part {path} is missing or unreadable ({str(error)[:120]}); {_redo(path)}") from None


def _redo(path: Path) -> str:
    return f"run `fmb embed {path.parent.name}` to redo the damaged parts (the others are kept)"


#: Parts checked in this process, by (path, size, mtime, inode): each is hashed once per process.
_VERIFIED: set[tuple] = set()


def verify_part(path: Path) -> None:
    """Refuse a part of a finished embedding directory whose bytes are not those its manifest
    records (sha256); hashed once per part per process."""
    path = Path(path)
    stat = path.stat()
    stamp = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if stamp in _VERIFIED:
        return
    expected = recorded_checksums(path.parent).get(path.name)
    if expected is not None and file_sha256(path) != expected:
        raise FmbError(f"embedding part {path} does not match the sha256 its manifest records (changed or damaged "
                       f"since it was written); {_redo(path)}")
    _VERIFIED.add(stamp)


def recorded_checksums(directory: Path) -> dict[str, str]:
    """{part file name: sha256} of a finished embedding directory's manifest (empty without one)."""
    manifest = EmbeddingFiles(directory).manifest
    if not manifest.is_file():
        return {}
    return {entry["file"]: entry.get("sha256") for entry in read_manifest(manifest)["parts"].values()
            if isinstance(entry, dict) and "file" in entry}


def damaged_parts(directory: Path, full: bool = False) -> list[tuple[Path, str]]:
    """(part, why) of each part of a finished embedding directory that is missing, unreadable, has
    other rows than recorded, or (when `full`, or when it was changed after the manifest was written)
    other bytes than its sha256 says. Without `full` only the footers of unchanged parts are read."""
    files = EmbeddingFiles(directory)
    if not files.manifest.is_file():
        return []
    written = files.manifest.stat().st_mtime_ns
    damaged = []
    for unit, entry in read_manifest(files.manifest)["parts"].items():
        path = directory / entry["file"]
        why = _part_problem(path, entry, full or (path.is_file() and path.stat().st_mtime_ns > written))
        if why:
            damaged.append((path, why))
    return damaged


def _part_problem(path: Path, entry: dict, hash_it: bool) -> str | None:
    if not path.is_file():
        return "missing"
    try:
        rows = pq.read_metadata(path).num_rows
    except (OSError, pa.ArrowException):
        return "unreadable"
    if rows != entry.get("rows"):
        return f"{rows} rows, the manifest records {entry.get('rows')}"
    if hash_it and entry.get("sha256") and file_sha256(path) != entry["sha256"]:
        return "sha256 differs from the manifest's"
    return None


def part_arrays(table: pa.Table, modalities: tuple[str, ...] = MODALITIES
                ) -> tuple[np.ndarray, dict[str, np.ndarray], dict[str, np.ndarray]]:
    """(ids, {modality: (N, D) float32}, {modality: (N,) float64 residual}) of a table of parts."""
    ids = table.column("object_id").to_numpy()
    out, residuals = {}, {}
    for modality in modalities:
        if modality in table.column_names:
            column = table.column(modality).combine_chunks()
            out[modality] = column.values.to_numpy().reshape(len(column), column.type.list_size)
        if residual_key(modality) in table.column_names:
            residuals[modality] = table.column(residual_key(modality)).to_numpy().astype(np.float64)
    return ids, out, residuals


def refuse_duplicates(directory: Path, ids: np.ndarray) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        raise duplicate_ids(directory, int(unique[counts > 1][0]), int(counts[counts > 1][0]))


def duplicate_ids(directory: Path, object_id: int, count: int) -> FmbError:
    return FmbError(f"{directory}: object id {object_id} appears {count} times in the embedding parts (two data "
                    "versions mixed?); embed again into a new directory")


# -- the original research code's .pt format: a list of dicts with object_id and embedding_* keys ----
#: Original key names (AstroPT/AstroCLIP and AION) -> fmb modality.
LEGACY_KEYS = {
    "embedding_images": "image", "embedding_hsc": "image",
    "embedding_spectra": "spectrum", "embedding_spectrum": "spectrum",
    "embedding_joint": "joint", "embedding_hsc_desi": "joint",
}
_EXPORT_KEYS = {"image": "embedding_images", "spectrum": "embedding_spectra", "joint": "embedding_joint"}


def export_pt(directory: Path, path: Path) -> int:
    """Write the embeddings of `directory` as the original `.pt` list of dicts; returns the count."""
    import torch

    ids, matrices = load_embeddings(directory)
    records = [{"object_id": int(i), **{_EXPORT_KEYS[m]: torch.from_numpy(v[k].copy()) for m, v in matrices.items()}}
               for k, i in enumerate(ids)]
    write_torch(records, path)
    return len(records)

"""The original research code's embedding files (`.pt`) read into fmb's embedding store.

The original `torch.save`d one of two shapes (reference §5.1, §12):

* a list of records, one per object: ``{"object_id": 17, "embedding_images": <1-D tensor>, ...}``
  (``targetid`` stands in for a missing ``object_id``; other keys, such as ``redshift``, are ignored);
* a dict of columns: ``{"object_id": <N ids>, "embedding_images": <(N, D) tensor>, ...}``.

Embedding keys map to fmb's modalities by `fmb.embed.store.LEGACY_KEYS` (AstroPT and AstroCLIP:
``embedding_images/spectra/joint``; AION: ``embedding_hsc/spectrum/hsc_desi``). A missing joint
embedding is not made up (the original concatenated image and spectrum in some consumers).

The file is opened with ``torch.load(weights_only=True)`` only (`fmb.io.read_torch`): a pickle that
would run code is refused before any of it runs. Every object is checked before anything is
written: an id that is not an integer, a missing or extra embedding key, a vector of another width
or holding NaN, or an id seen twice is one error naming the object and the field. The result is
written through the embedding store (`write_embeddings`), so every stage reads it like its own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fmb.embed.store import LEGACY_KEYS, write_embeddings
from fmb.errors import DataError, FmbError
from fmb.io import read_torch

ID_KEYS = ("object_id", "targetid")
WHAT = "an embedding file (the original's records of object ids and tensors)"


def import_embeddings(path: Path, directory: Path, signature: dict) -> int:
    """Read an original `.pt` embedding file into parts + manifest under `directory`; the count."""
    ids, matrices = read_embeddings(path)
    return write_embeddings(directory, signature, ids, matrices)


def read_embeddings(path: Path) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """(object ids, {modality: (N, D) float32}) of an original `.pt` file, every entry checked."""
    content = read_torch(path, WHAT)
    if isinstance(content, dict):
        return _from_columns(path, content)
    if isinstance(content, (list, tuple)):
        return _from_records(path, list(content))
    raise FmbError(f"{path}: holds a {type(content).__name__}, not the original's list of embedding records "
                   "or dict of columns")


def _embedding_keys(path: Path, keys, where: str) -> dict[str, str]:
    """{original key: modality} of the embedding keys among `keys`; two keys of one modality are refused."""
    found: dict[str, str] = {}
    for key in keys:
        if key in LEGACY_KEYS:
            twin = next((k for k, m in found.items() if m == LEGACY_KEYS[key]), None)
            if twin is not None:
                raise FmbError(f"{path}: {where} has both {twin} and {key}, two {LEGACY_KEYS[key]} embeddings")
            found[key] = LEGACY_KEYS[key]
    if not found:
        raise FmbError(f"{path}: {where} has none of the embedding keys {', '.join(LEGACY_KEYS)}")
    return found


def _from_records(path: Path, records: list) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    if not records:
        raise FmbError(f"{path}: the list of embedding records is empty")
    if not isinstance(records[0], dict):
        raise FmbError(f"{path}: record 0 is a {type(records[0]).__name__}, not a dict of object_id and embeddings")
    keys = _embedding_keys(path, records[0], "record 0")
    ids, rows = [], {key: [] for key in keys}
    for position, record in enumerate(records):
        if not isinstance(record, dict):
            raise FmbError(f"{path}: record {position} is a {type(record).__name__}, not a dict")
        object_id = _object_id(path, record, position)
        extra = sorted(set(record) & set(LEGACY_KEYS) - set(keys))
        if extra:
            raise _bad(path, object_id, extra[0], "is not in record 0: every record must have the same embeddings")
        for key in keys:
            if key not in record:
                raise _bad(path, object_id, key, "is missing (record 0 has it)")
            rows[key].append(_vector(path, object_id, key, record[key]))
            if len(rows[key][-1]) != len(rows[key][0]):
                raise _bad(path, object_id, key, f"has {len(rows[key][-1])} values, record 0 has {len(rows[key][0])}")
        ids.append(object_id)
    ids_array = np.asarray(ids, dtype=np.int64)
    _refuse_duplicates(path, ids_array)
    return ids_array, {keys[key]: np.stack(vectors) for key, vectors in rows.items()}


def _from_columns(path: Path, columns: dict) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    id_key = next((key for key in ID_KEYS if key in columns), None)
    if id_key is None:
        raise FmbError(f"{path}: the dict of columns has no object_id (nor targetid)")
    raw_ids = _array(columns[id_key]).reshape(-1)
    if raw_ids.dtype.kind not in "iu":
        raise FmbError(f"{path}: field {id_key} holds {raw_ids.dtype} values, not integer object ids")
    ids = raw_ids.astype(np.int64)
    matrices = {}
    for key, modality in _embedding_keys(path, columns, "the dict of columns").items():
        matrix = _array(columns[key])
        if matrix.ndim != 2 or len(matrix) != len(ids):
            raise FmbError(f"{path}: field {key} has shape {tuple(matrix.shape)}, expected ({len(ids)}, D): "
                           f"one row per object id")
        if matrix.dtype.kind not in "fiu":
            raise FmbError(f"{path}: field {key} holds {matrix.dtype} values, not numbers")
        bad = np.flatnonzero(~np.isfinite(matrix.astype(np.float64)).all(axis=1))
        if len(bad):
            raise _bad(path, int(ids[bad[0]]), key, "holds NaN or inf")
        matrices[modality] = matrix.astype(np.float32)
    _refuse_duplicates(path, ids)
    return ids, matrices


def _object_id(path: Path, record: dict, position: int) -> int:
    key = next((k for k in ID_KEYS if k in record), None)
    if key is None:
        raise FmbError(f"{path}: record {position} has no object_id (nor targetid)")
    value = record[key]
    if hasattr(value, "numel") and value.numel() == 1 and not value.is_floating_point():
        value = value.item()  # a 0-d integer tensor
    if isinstance(value, bool) or not isinstance(value, int):
        raise FmbError(f"{path}: record {position}: field {key} is {value!r}, not an integer object id")
    return value


def _vector(path: Path, object_id: int, key: str, value) -> np.ndarray:
    try:
        vector = _array(value).astype(np.float32).reshape(-1)
    except (TypeError, ValueError) as error:
        raise _bad(path, object_id, key, f"is not an array of numbers ({str(error)[:80]})") from None
    if not len(vector):
        raise _bad(path, object_id, key, "is empty")
    if not np.isfinite(vector).all():
        raise _bad(path, object_id, key, "holds NaN or inf")
    return vector


def _array(value) -> np.ndarray:
    """A tensor, list or number as a numpy array (torch only when the value is a tensor)."""
    if hasattr(value, "detach"):
        return value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.dtype == object:
        raise ValueError("ragged or non-numeric")
    return array


def _refuse_duplicates(path: Path, ids: np.ndarray) -> None:
    unique, counts = np.unique(ids, return_counts=True)
    if (counts > 1).any():
        repeated = int(unique[counts > 1][0])
        positions = np.flatnonzero(ids == repeated)
        raise FmbError(f"{path}: object id {repeated} appears {len(positions)} times (entries "
                       f"{', '.join(map(str, positions[:3]))}); an id must name one object")


def _bad(path: Path, object_id: int, field: str, reason: str) -> FmbError:
    return FmbError(f"{path}: {DataError(reason, object_id=object_id, field=field)}")

"""Atomic, durable file writes: write beside the target under a temporary name, flush it to disk,
rename, and flush the directory.

A reader never sees a half-written file, a power loss never leaves a renamed but empty one, and a
killed run leaves at most a stray `.tmp-*` file, which names the host and process that wrote it so
the next run of the stage that owns it can tell it is stale and remove it (`remove_stale_temporaries`).
`read_torch` is the reading side of `write_torch` that never runs code from the file.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fmb.errors import FmbError


#: A temporary file older than this is stale whoever wrote it (one write never takes this long).
STALE_AFTER_S = 24 * 3600
_TEMPORARY = re.compile(r"^\.tmp-.+?(?:\.(?P<host>[A-Za-z0-9_]+)-(?P<pid>\d+))?\.[^.]+$")


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success make it durable and rename it to `path`,
    on error remove it."""
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(prefix=f".tmp-{path.name}.{_host()}-{os.getpid()}.", dir=path.parent)
    except OSError as error:  # a file where a folder should be, no permission, a read-only disk
        where = "" if error.filename is None or Path(error.filename).parent == path.parent else f" ({error.filename})"
        raise FmbError(f"cannot write {path}: {error.strerror or error}{where}") from None
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes private files; outputs are ordinary files
    try:
        yield Path(temporary)
        _fsync(temporary)  # the data is on disk before the name points at it
        os.replace(temporary, path)
        _fsync(path.parent)  # and the new name survives a power loss too
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _fsync(path: str | Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _host() -> str:
    return re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


def remove_stale_temporaries(paths: list[Path]) -> list[Path]:
    """Remove the temporary files `atomic_path` left for `paths` (files: beside them; directories:
    anywhere inside) whose writer is gone: a dead process of this host, or older than `STALE_AFTER_S`.
    Returns what was removed. Only names of fmb's own temporary pattern are touched."""
    removed = []
    for candidate in _temporaries_of(paths):
        if _is_stale(candidate):
            candidate.unlink(missing_ok=True)
            removed.append(candidate)
    return removed


def _temporaries_of(paths: list[Path]) -> Iterator[Path]:
    for path in paths:
        if path.is_dir():
            yield from (p for p in path.rglob(".tmp-*") if p.is_file())
        elif path.parent.is_dir():
            yield from (p for p in path.parent.glob(f".tmp-{glob.escape(path.name)}.*") if p.is_file())


def _is_stale(path: Path) -> bool:
    found = _TEMPORARY.match(path.name)
    if found is None:
        return False
    try:
        if time.time() - path.stat().st_mtime > STALE_AFTER_S:
            return True
    except FileNotFoundError:
        return False
    return found.group("host") == _host() and not _alive(int(found.group("pid")))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


def write_table(table: pa.Table, path: str | Path, **parquet_options) -> Path:
    """Write a Parquet file atomically (zstd by default)."""
    parquet_options.setdefault("compression", "zstd")
    with atomic_path(path) as temporary:
        pq.write_table(table, temporary, **parquet_options)
    return Path(path)


def row_groups(path: str | Path, columns: list[str] | None = None) -> Iterator[pa.Table]:
    """A Parquet file's row groups in order, one in memory at a time (no read-ahead: `iter_batches`
    buffers ~18 MB per file, which adds up when many files are read in step)."""
    file = pq.ParquetFile(path, pre_buffer=False)
    for group in range(file.metadata.num_row_groups):
        yield file.read_row_group(group, columns=columns)


def write_torch(obj, path: str | Path) -> Path:
    """`torch.save` atomically (checkpoints, fitted detectors, .pt exports)."""
    import torch  # only callers that already use torch pay for the import

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
    return Path(path)


def read_torch(path: str | Path, what: str, allowed: Sequence[type] = ()):
    """`torch.load` restricted to tensors, containers and plain values (``weights_only``): a pickle
    that would call anything on loading is refused with a clear error, before any of it runs.

    `allowed` adds classes the file may hold (`torch.serialization.safe_globals`, for this call
    only); the caller vouches that restoring them (``__new__`` then a ``__dict__`` update, or their
    constructor) runs nothing they do not define."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(error))
        if found is None:  # not a pickle of objects at all (plain bytes, a truncated file)
            raise FmbError(f"{path}: not a readable {what} (not a PyTorch file fmb can read: "
                           f"{(str(error).splitlines() or [''])[0][:160]})") from None
        named = f" (it names {found.group(1) or found.group(2)})"
        raise FmbError(f"{path}: refusing to load it as {what}: it holds objects other than those fmb saves{named}, "
                       "and unpickling them could run code; use a file fmb wrote, or one from a source you trust "
                       "converted to plain tensors") from None
    except (RuntimeError, EOFError, OSError, ValueError) as error:
        raise FmbError(f"{path}: not a readable {what} ({type(error).__name__}: {str(error)[:200]})") from None


def write_csv(frame, path: str | Path, **to_csv_options) -> Path:
    """`frame.to_csv` atomically (a pandas DataFrame; options as for `to_csv`)."""
    with atomic_path(path) as temporary:
        frame.to_csv(temporary, **to_csv_options)
    return Path(path)


def read_json_object(path: Path, remedy: str) -> dict:
    """A JSON object fmb wrote (a manifest, a state file), or one line saying it is corrupt and `remedy`."""
    try:
        data = json.loads(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        return data
    except (OSError, ValueError) as error:
        raise FmbError(f"{path} is corrupt ({str(error)[:120]}); {remedy}") from None


def write_json(data, path: str | Path) -> Path:
    """Write pretty JSON atomically."""
    with atomic_path(path) as temporary:
        temporary.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return Path(path)


def parquet_footer_sha256(path: Path) -> str:
    """sha256 of a Parquet file's footer (schema, row groups, statistics): a few KB that change with
    the data; for an unreadable file, of its size and mtime."""
    try:
        size = path.stat().st_size
        if size < 12:
            raise OSError("too short for a Parquet file")
        with open(path, "rb") as handle:
            handle.seek(size - 8)
            length, magic = int.from_bytes(handle.read(4), "little"), handle.read(4)
            if magic != b"PAR1" or length > size - 12:
                raise OSError("no Parquet footer")
            handle.seek(size - 8 - length)
            return hashlib.sha256(handle.read(length)).hexdigest()
    except OSError:
        stat = path.stat()
        return hashlib.sha256(f"{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()

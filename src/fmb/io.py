"""Atomic file writes: write beside the target under a temporary name, then rename.

A reader never sees a half-written file, and a killed run leaves at most a stray `.tmp-*` file
that the next write replaces. `read_torch` is the reading side of `write_torch` that never runs
code from the file.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path next to `path`; on success rename it to `path`, on error remove it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(handle)
    os.chmod(temporary, 0o666 & ~_umask())  # mkstemp makes private files; outputs are ordinary files
    try:
        yield Path(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


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


def write_torch(obj, path: str | Path) -> Path:
    """`torch.save` atomically (checkpoints, fitted detectors, .pt exports)."""
    import torch  # only callers that already use torch pay for the import

    with atomic_path(path) as temporary:
        torch.save(obj, temporary)
    return Path(path)


def read_torch(path: str | Path, what: str):
    """`torch.load` restricted to tensors, containers and plain values (``weights_only``): a pickle
    that would call anything on loading is refused with a clear error, before any of it runs."""
    import pickle

    import torch

    from fmb.errors import FmbError

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"GLOBAL (\S+)|but got <class '([^']+)'>", str(error))
        named = f" (it names {found.group(1) or found.group(2)})" if found else ""
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

"""Where rows come from: `data.source` parsed once (`parse_source`) and opened (`open_source`).

    data/synth                 a directory of Parquet files in the row contract   (parquet.py)
    hf:<dataset id or dir>     a Hugging Face dataset, cached or streamed          (hf.py)
    desi:<dir>                 DESI coadd FITS paired with data.cutouts by TARGETID (desi.py)
    arrow:<dir>                datasets' save_to_disk folders, memory-mapped       (arrow.py)

Only `hf:`, `desi:` and `arrow:` are prefixes: anything else is a directory, ':' in its name included,
read as Parquet files unless it holds save_to_disk folders and no Parquet file (then as `arrow:`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from fmb.config import ResolvedConfig
from fmb.data.sources.base import MISSING_ID, Source, ids_from_table, table_to_rows
from fmb.data.sources.parquet import ParquetSource
from fmb.errors import ConfigError

__all__ = ["MISSING_ID", "ParquetSource", "Source", "SourceSpec", "ids_from_table", "local_inputs", "open_source",
           "parse_source", "table_to_rows"]

_PREFIXES = ("hf", "desi", "arrow")


@dataclass(frozen=True)
class SourceSpec:
    """A parsed `data.source`: its kind and the rest of the string (a path, or a hub dataset id)."""

    kind: Literal["parquet", "hf", "desi", "arrow"]
    location: str


def parse_source(spec: str) -> SourceSpec:
    """The one reading of a `data.source` string (the stage engine and `open_source` both use it)."""
    if not spec:
        raise ConfigError("data.source is empty: set a Parquet directory, hf:<dataset>, desi:<dir> or arrow:<dir>")
    kind, sep, rest = spec.partition(":")
    if sep and kind in _PREFIXES:
        if not rest:
            raise ConfigError(f"data.source {spec!r} names no {kind} location")
        return SourceSpec(kind, rest)
    return SourceSpec("parquet", spec)


def open_source(config: ResolvedConfig, spec: str | None = None) -> Source:
    """The source named by `spec` (default: ``data.source``)."""
    parsed = parse_source(spec or config.data.source)
    if parsed.kind == "hf":
        from fmb.data.sources.hf import HuggingFaceSource

        local = config.path(parsed.location)
        return HuggingFaceSource(str(local) if local.exists() else parsed.location, config.data)
    if parsed.kind == "desi":
        from fmb.data.sources.desi import DesiSource

        if not config.data.cutouts:
            raise ConfigError("a desi: source needs data.cutouts, the directory of <TARGETID>.fits cutouts")
        return DesiSource(config.path(parsed.location), config.path(config.data.cutouts))
    from fmb.data.sources.arrow import ArrowSource, is_arrow_cache

    local = config.path(parsed.location)
    if parsed.kind == "arrow" or is_arrow_cache(local):
        return ArrowSource(local)
    return ParquetSource(local, config.data)


def local_inputs(config: ResolvedConfig) -> list[Path]:
    """The local files and directories the configured source reads (a hub id has none: its revision
    is in the source's fingerprint)."""
    parsed = parse_source(config.data.source)
    local = config.path(parsed.location)
    paths = [local] if parsed.kind == "parquet" or local.exists() else []
    return paths + ([config.path(config.data.cutouts)] if config.data.cutouts else [])

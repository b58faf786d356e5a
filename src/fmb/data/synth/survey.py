"""`synthesize`: run the chunk generator over a process pool and stream the results to Parquet.

The parent only writes: it keeps at most 2 x workers chunks in flight (ordered, like
`Pool.imap`, but with back-pressure so a slow disk cannot make results pile up in memory), appends
each chunk to the open shard as 64-row row groups, and renames every file into place only once
it is complete.
"""

from __future__ import annotations

import collections
import dataclasses
import multiprocessing
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from fmb.data.schema import ROW_SCHEMA
from fmb.io import atomic_path, write_json
from fmb.errors import FmbError
from fmb.layout import SurveyLayout, owner_marker
from fmb.data.synth.anomalies import CLASSES
from fmb.data.synth.generate import (CATALOG_SCHEMA, CHUNK_SIZE, TRUTH_SCHEMA, ChunkResult, ChunkTask, Variant,
                                     class_probabilities, generate_chunk, get_context, object_ids)
from fmb.data.synth.library import SOURCES
from fmb.data.synth.sky import CLEAN, Sky
from fmb.data.synth.population import GALAXY_TYPES, LOGM_MAX, LOGM_MIN, TRACERS, Z_MAX, Z_MIN, normalise_mix
from fmb.data.synth.scene import (DEPTH_NISP, DEPTH_VIS, NISP_FWHM, OBSCURATION, PIXEL_SCALE, SEEING_FWHM,
                                  TELESCOPE_DIAMETER, VIS_FWHM)

ROW_GROUP_SIZE = 64  # small row groups: one object can be fetched without reading a whole shard
DICTIONARY_COLUMNS = ("SPECTYPE", "anomaly_class", "spectype", "galaxy_type", "tracer")


def synthesize(out_dir: Path, n: int, seed: int = 42, *, cutout_px: int = 64, anomaly_rate: float = 0.0075,
               psf_scale: float = 1.0, noise_scale: float = 1.0, population_mix: Mapping[str, float] | None = None,
               sky: Sky = CLEAN, workers: int = 2, shard_size: int = 1024,
               progress: Callable[[int], None] | None = None) -> dict:
    """Write a synthetic Euclid x DESI survey of `n` objects into `out_dir`.

    Files: part-00000.parquet ... (rows of `schema.ROW_SCHEMA`, `shard_size` objects each),
    catalog.parquet (TARGETID, Z, LOGM, LOGSFR, SPECTYPE), truth.parquet (class and generating
    parameters per object) and synth.json (parameters, counts, timing). Deterministic for a seed,
    whatever `workers` is. Returns the summary that synth.json holds.

    A shifted survey (another test set): `psf_scale` multiplies the FWHM of both PSFs, `noise_scale`
    the image and spectrum noise sigma, and `population_mix` ({tracer: weight}, renormalised; None:
    the default mix) weighs the base population's tracers (anomaly classes that pin one keep it).
    `sky` says which nuisances surround every object (`fmb.data.synth.sky`; default none: a clean survey).
    """
    _check_arguments(n, seed, cutout_px, workers, shard_size)
    class_probabilities(anomaly_rate)  # validates the rate
    variant = _variant(psf_scale, noise_scale, population_mix, sky)
    out_dir = Path(out_dir)
    files = SurveyLayout(out_dir)
    _claim(out_dir)
    started = time.perf_counter()
    tasks = [ChunkTask(seed, k, min(CHUNK_SIZE, n - k * CHUNK_SIZE), cutout_px, anomaly_rate, variant)
             for k in range((n + CHUNK_SIZE - 1) // CHUNK_SIZE)]
    counts = collections.Counter()
    with _ShardWriter(out_dir, shard_size) as shards, \
            _AtomicParquet(files.truth, TRUTH_SCHEMA) as truth, \
            _AtomicParquet(files.catalog, CATALOG_SCHEMA) as catalog:
        for result in _run(tasks, workers):
            shards.write(result.rows)
            truth.write(result.truth)
            catalog.write(result.catalog)
            counts.update(result.truth.column("anomaly_class").to_pylist())
            if progress is not None:
                progress(result.rows.num_rows)
    _remove_stale_parts(out_dir, shards.paths)
    summary = {
        **_parameters(n, seed, cutout_px, anomaly_rate, variant, workers, shard_size),
        "classes": {name: counts.get(name, 0) for name in CLASSES},
        "first_object_id": int(object_ids(seed, 0, 1)[0]),
        "parts": [path.name for path in shards.paths], "catalog": files.catalog.name, "truth": files.truth.name,
        "fmb_version": _fmb_version(),
        "seconds": round(time.perf_counter() - started, 3),
    }
    write_json(summary, files.summary)
    return {**summary, "out_dir": str(out_dir), "parts": [str(path) for path in shards.paths],
            "catalog": str(files.catalog), "truth": str(files.truth), "synth_json": str(files.summary)}


def _parameters(n: int, seed: int, cutout_px: int, anomaly_rate: float, variant: Variant, workers: int,
                shard_size: int) -> dict:
    """Everything that decides the survey's content, for synth.json. "instrument" and "population"
    are the nominal ones; psf_scale, noise_scale and population_mix say how this survey departs."""
    return {
        "n": n, "seed": seed, "cutout_px": cutout_px, "anomaly_rate": anomaly_rate,
        "psf_scale": variant.psf_scale, "noise_scale": variant.noise_scale,
        "population_mix": dict(zip(TRACERS, variant.tracer_fractions)), "sky": dataclasses.asdict(variant.sky),
        "workers": workers,
        "shard_size": shard_size, "chunk_size": CHUNK_SIZE, "row_group_size": ROW_GROUP_SIZE,
        "instrument": {"pixel_scale_arcsec": PIXEL_SCALE, "psf": "Airy x Gaussian",
                       "telescope_diameter_m": TELESCOPE_DIAMETER, "obscuration": OBSCURATION,
                       "vis_fwhm_arcsec": VIS_FWHM, "nisp_fwhm_arcsec": NISP_FWHM,
                       "depth_vis_5sigma_ab": DEPTH_VIS, "depth_nisp_5sigma_ab": DEPTH_NISP,
                       "desi_fibre_diameter_arcsec": 1.5, "desi_seeing_fwhm_arcsec": SEEING_FWHM},
        "population": {"tracers": {name: {"fraction": fraction, "type_fractions": dict(zip(GALAXY_TYPES, types))}
                                   for name, (fraction, types) in TRACERS.items()},
                       "z_range": [Z_MIN, Z_MAX], "logm_range": [LOGM_MIN, LOGM_MAX]},
        "sources": SOURCES,
    }


def _variant(psf_scale: float, noise_scale: float, population_mix: Mapping[str, float] | None, sky: Sky) -> Variant:
    for name, value in (("psf_scale", psf_scale), ("noise_scale", noise_scale)):
        if not 0 < value < float("inf"):
            raise ValueError(f"{name} must be positive and finite, got {value}")
    return Variant(psf_scale, noise_scale, normalise_mix(population_mix), sky)


def _check_arguments(n: int, seed: int, cutout_px: int, workers: int, shard_size: int) -> None:
    if n <= 0:
        raise ValueError(f"n must be positive, got {n}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0 (numpy seeds), got {seed}")
    if cutout_px < 16:
        raise ValueError(f"cutout_px must be >= 16, got {cutout_px}")
    if workers < 1 or shard_size < 1:
        raise ValueError("workers and shard_size must be >= 1")


def _run(tasks: list[ChunkTask], workers: int) -> Iterator[ChunkResult]:
    """Chunk results in order. One worker runs in-process; more use a pool of fresh processes."""
    if workers == 1 or len(tasks) == 1:
        for task in tasks:
            yield generate_chunk(task)
        return
    # forkserver: workers start clean (no inherited threads or OpenMP state of the caller)
    context = multiprocessing.get_context("forkserver")
    initargs = (tasks[0].cutout_px, tasks[0].variant)
    with context.Pool(min(workers, len(tasks)), initializer=get_context, initargs=initargs) as pool:
        pending = collections.deque()
        queue = iter(tasks)
        for task in queue:
            pending.append(pool.apply_async(generate_chunk, (task,)))
            if len(pending) >= 2 * workers:
                break
        while pending:
            result = pending.popleft().get()
            next_task = next(queue, None)
            if next_task is not None:
                pending.append(pool.apply_async(generate_chunk, (next_task,)))
            yield result


class _AtomicParquet:
    """A Parquet file written in pieces under a temporary name (`fmb.io.atomic_path`) and renamed
    into place only when closed cleanly."""

    def __init__(self, path: Path, schema: pa.Schema):
        self._atomic = atomic_path(path)
        self.writer = pq.ParquetWriter(self._atomic.__enter__(), schema, **_options(schema))

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table, row_group_size=ROW_GROUP_SIZE)

    def close(self, ok: bool = True) -> None:
        self.writer.close()
        if ok:
            self._atomic.__exit__(None, None, None)
        else:  # the temporary file is removed, nothing is renamed
            self._atomic.__exit__(RuntimeError, RuntimeError("aborted"), None)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(ok=exc_type is None)


def _options(schema: pa.Schema) -> dict:
    """zstd; dictionaries only for the few categorical columns; BYTE_STREAM_SPLIT for the float32
    pixels and spectra (11% smaller files than plain zstd at the same speed, measured)."""
    floats = [path for path, physical in _leaf_columns(schema) if physical == "FLOAT"]
    return {"compression": "zstd", "use_dictionary": [n for n in DICTIONARY_COLUMNS if n in schema.names] or False,
            "column_encoding": {path: "BYTE_STREAM_SPLIT" for path in floats} or None}


def _leaf_columns(schema: pa.Schema) -> list[tuple[str, str]]:
    """(Parquet leaf path, physical type) of every column, e.g. 'VIS_image.list.element.list.element'."""
    buffer = pa.BufferOutputStream()
    pq.write_table(schema.empty_table(), buffer)
    parquet_schema = pq.ParquetFile(pa.BufferReader(buffer.getvalue())).schema
    return [(column.path, column.physical_type) for column in parquet_schema]


class _ShardWriter:
    """Rows into part-00000.parquet, part-00001.parquet, ... of `shard_size` rows each, in row
    groups of exactly ROW_GROUP_SIZE rows (only a shard's last group may be shorter), whatever
    the shard size; fewer than ROW_GROUP_SIZE rows wait in a buffer."""

    def __init__(self, out_dir: Path, shard_size: int):
        self.out_dir = out_dir
        self.shard_size = shard_size
        self.paths: list[Path] = []
        self.current: _AtomicParquet | None = None
        self.rows_in_current = 0
        self.pending: pa.Table | None = None

    def write(self, table: pa.Table) -> None:
        self.pending = table if self.pending is None else pa.concat_tables([self.pending, table])
        while self.pending is not None and self.pending.num_rows >= self._group_size():
            size = self._group_size()
            # one contiguous chunk per group: Parquet would start a new row group at a chunk edge
            self._emit(self.pending.slice(0, size).combine_chunks())
            self.pending = self.pending.slice(size) if self.pending.num_rows > size else None

    def _group_size(self) -> int:
        return min(ROW_GROUP_SIZE, self.shard_size - self.rows_in_current)

    def _emit(self, group: pa.Table) -> None:
        if self.current is None:
            self.paths.append(SurveyLayout(self.out_dir).part(len(self.paths)))
            self.current = _AtomicParquet(self.paths[-1], ROW_SCHEMA)
        self.current.write(group)
        self.rows_in_current += group.num_rows
        if self.rows_in_current == self.shard_size:
            self.current.close()
            self.current = None
            self.rows_in_current = 0

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None and self.pending is not None:
            self._emit(self.pending.combine_chunks())
        if self.current is not None:
            self.current.close(ok=exc_type is None)


def _claim(out_dir: Path) -> None:
    """Make `out_dir` fmb's (marked), or reuse one fmb made; a non-empty directory that fmb did not
    make is refused, since synth replaces its parts and a changed setting deletes it."""
    marker = owner_marker(out_dir)
    if out_dir.is_dir() and not marker.is_file() and any(out_dir.iterdir()):
        raise FmbError(f"synth.out {out_dir} is not empty and was not made by fmb; the synthetic survey goes "
                       "to a new or empty directory (fmb rewrites and may delete what it makes there)")
    if out_dir.exists() and not out_dir.is_dir():
        raise FmbError(f"synth.out {out_dir} is a file; give a directory")
    out_dir.mkdir(parents=True, exist_ok=True)
    marker.write_text("made by fmb data synth: fmb may delete this directory and everything in it\n")


def _remove_stale_parts(out_dir: Path, written: list[Path]) -> None:
    """Parts left by an earlier, larger run in the same directory would be read as ours."""
    keep = {path.name for path in written}
    for path in out_dir.glob("part-*.parquet"):
        if path.name not in keep:
            path.unlink()


def _fmb_version() -> str:
    from fmb import __version__

    return __version__

"""`fmb embed MODEL`: batched, prefetched, sharded and resumable embedding extraction.

The index is cut into work units (one output part each). A DataLoader streams row batches of the
units still to do (reading, checking and preprocessing in worker processes while the model runs);
the model embeds each batch under `inference_mode`; when every batch of a unit has arrived its part
and its record are written atomically, and once every unit is done the manifest. Killed and restarted — or run as several workers, each given its units — the run skips
the units already recorded and redoes the rest: no object is lost or duplicated.
Objects a model cannot use (failed validation, missing modality) are recorded, never mis-paired.

Around the model (`_prepare`, `Embedder`): convolution weights and image batches in ``channels_last``
(the layout oneDNN's and cuDNN's convolutions prefer: the adapters, the codecs, patch embeddings);
on a GPU, pinned host memory and non-blocking copies, bf16 autocast where the GPU computes bf16
natively (`fmb.models.base.autocast_dtype`), the encoder's repeated blocks `torch.compile`d (eager
again, silently, where they cannot compile; not on CPUs, where compiling costs more than it saves in
a run of this size: see benchmarks/RESULTS.md) and the batch size probed: the largest power of two
whose measured memory per object fits the free memory, up to `embed.batch_size` times
`PROBE_GROWTH`. On any device a batch that runs out of memory is split in halves, and the smaller
size is kept (a single object that does not fit is a one-line error). The progress line shows
objects/s and the share of the time the model waited for data (more than a few percent: more
`embed.num_workers`). The model computes on all the cores beside its workers: the `fmb` command makes
OpenMP's idle threads sleep instead of spin (`fmb.cli.main`), so a worker that takes a core does not
stall the model's threads.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from fmb.config import ResolvedConfig
from fmb.data.index import indexed_content_sha256, read_index_table
from fmb.data.loader import BatchStream, StreamItem, plan_units
from fmb.data.scan import write_rejects
from fmb.data.sources import open_source
from fmb.data.validate import SKIPPED, Issue
from fmb.embed.store import Manifest, part_schema, write_part
from fmb.models.base import (Encoder, autocast_dtype, file_sha256, pick_device, state_sha256,
                             to_device)
from fmb.layout import EmbeddingFiles
from fmb.models.registry import build_encoder
from fmb.progress import progress_bar
from fmb.errors import FmbError
from fmb.stage import ModelStage, Sharding


def embed(config: ResolvedConfig, model: str, *, unit_filter: Callable[[int], bool] | None = None) -> dict:
    """Extract embeddings of every indexed object for `model`; returns a summary.

    `unit_filter` selects work units (e.g. one SLURM array task's share); by default all.
    """
    settings = getattr(config.models, model).embed
    encoder = build_encoder(config, model, settings.weights)
    device = pick_device(getattr(config.models, model).device)
    _prepare(encoder, device)
    data = config.layout.data
    index = read_index_table(data.dir)
    source = open_source(config)
    units = plan_units(index, settings.rows_per_shard)
    out = config.layout.embeddings(model).dir
    signature = _signature(encoder, settings.rows_per_shard, data.index, indexed_content_sha256(data.dir, source))
    manifest = Manifest.open(out, signature)
    todo = [u for u in units if not manifest.is_done(u.unit_id) and (unit_filter is None or unit_filter(u.unit_id))]
    total = sum(len(u.rows) for u in todo)
    written = _run(encoder, device, source, config, settings, todo, manifest, total)
    manifest = Manifest.open(out, signature)  # again: other workers may have finished units meanwhile
    complete = all(manifest.is_done(u.unit_id) for u in units)
    if complete:  # the last worker to finish writes the manifest every reader waits for
        manifest.merge()
        _record_rejects(config, model, manifest)
    return {"model": model, "units": len(units), "units_done_now": written, "complete": complete,
            "objects": manifest.total_rows, "directory": out, "weights": encoder.adapted_from or f"base ({encoder.describe()['weights']})"}


def _signature(encoder: Encoder, rows_per_shard: int, index_path: Path, data_sha256: str) -> dict:
    """What the parts of one directory must share; resuming with any of it changed is refused."""
    return {**encoder.describe(), "weights_sha256": state_sha256(encoder.state_dict()),
            "rows_per_shard": rows_per_shard, "index_sha256": file_sha256(index_path), "data_sha256": data_sha256}


def _prepare(encoder: Encoder, device: torch.device) -> None:
    """The encoder on `device` for inference: eval, conv weights channels_last, blocks compiled on a GPU."""
    encoder.to(device).eval()
    encoder.to(memory_format=torch.channels_last)  # 4-d (conv) weights only; the state's values are unchanged
    if device.type == "cuda":
        for block in encoder.inference_blocks():
            _compile(block)


def _compile(module: torch.nn.Module) -> None:
    """`module.forward` through `torch.compile`, falling back to eager for good at the first failure."""
    eager, compiled = module.forward, torch.compile(module.forward)

    def forward(*args, **kwargs):
        nonlocal compiled
        if compiled is not None:
            try:
                return compiled(*args, **kwargs)
            except Exception as exc:  # any compiler failure (no triton, an unsupported op): eager is the same function
                logging.getLogger(__name__).info("torch.compile failed (%s); running %s eagerly",
                                                 type(exc).__name__, type(module).__name__)
                compiled = None
        return eager(*args, **kwargs)

    module.forward = forward


def _run(encoder, device, source, config, settings, todo, manifest: Manifest, total: int) -> int:
    if not todo:
        return 0
    embedder = Embedder(encoder, device, autocast_dtype(settings.amp, device))
    batch_size = settings.batch_size
    if device.type == "cuda":
        batch_size = embedder.probe(BatchStream(source, todo[:1], encoder.preprocessor, batch_size, config.data), batch_size)
    stream = BatchStream(source, todo, encoder.preprocessor, batch_size, config.data)
    workers = settings.num_workers
    loader = DataLoader(stream, batch_size=None, num_workers=workers, pin_memory=device.type == "cuda",
                        prefetch_factor=settings.prefetch if workers > 0 else None, persistent_workers=False)
    pending: dict[int, list[tuple[int, StreamItem, dict]]] = defaultdict(list)
    dims = encoder.describe()["dims"]
    schema = part_schema({m: dims[m] for m in encoder.modalities}, encoder.residual_modalities, encoder.covariates)
    written, waited, started = 0, 0.0, time.perf_counter()
    with progress_bar(f"embedding {encoder.name}", total) as advance:
        items = iter(loader)
        while True:
            asked = time.perf_counter()
            item = next(items, None)
            waited += time.perf_counter() - asked
            if item is None:
                break
            item, embedded = _finite_only(encoder.name, item, embedder(item.batch))
            pending[item.unit_id].append((item.batch_no, item, embedded))
            advance(len(item.object_ids) + sum(1 for i in item.issues if i.action == "skipped"),
                    f"waiting for data {waited / max(time.perf_counter() - started, 1e-9):.0%} of the time")
            if len(pending[item.unit_id]) == item.n_batches:
                _write_unit(manifest, item.unit_id, sorted(pending.pop(item.unit_id), key=lambda t: t[0]), schema)
                written += 1
    return written


#: On a GPU the probe may grow the batch up to this many times `embed.batch_size`.
PROBE_GROWTH = 8


class Embedder:
    """The model on one batch: moved to the device (non-blocking from pinned memory), images in
    channels_last, under `inference_mode` and autocast, in pieces of at most `size` objects; a piece
    that runs out of memory halves `size` (kept for later batches) and is run again."""

    def __init__(self, encoder: Encoder, device: torch.device, dtype: torch.dtype | None):
        self.encoder, self.device, self.dtype = encoder, device, dtype
        self.size: int | None = None  # no limit until memory runs out

    def __call__(self, batch: dict[str, torch.Tensor] | None) -> dict[str, np.ndarray]:
        if batch is None:
            return {}
        n = len(batch["object_id"])
        while True:
            size = min(n, self.size or n)
            try:
                pieces = [self._forward(_objects(batch, start, start + size, n)) for start in range(0, n, size)]
                return {key: np.concatenate([piece[key] for piece in pieces]) for key in pieces[0]}
            except (torch.OutOfMemoryError, RuntimeError) as exc:
                if not _out_of_memory(exc):
                    raise
                if size == 1:
                    raise FmbError(f"{self.encoder.name}: one object does not fit in {self.device.type} memory "
                                   f"(object {int(batch['object_id'][0])})") from None
                self.size = size // 2
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()

    def _forward(self, batch: dict[str, torch.Tensor]) -> dict[str, np.ndarray]:
        batch = {k: to_device(v, self.device) for k, v in batch.items()}
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            out = self.encoder.embed(batch)
        return {modality: tensor.float().cpu().numpy() for modality, tensor in out.items()}

    def probe(self, stream: BatchStream, batch_size: int) -> int:
        """(GPU) The batch size to stream: the largest power of two whose memory, measured on the first
        batch, fits the free memory, at most `PROBE_GROWTH` x `batch_size`."""
        item = next((item for item in stream if item.batch is not None), None)
        if item is None:
            return batch_size
        torch.cuda.synchronize(self.device)
        torch.cuda.reset_peak_memory_stats(self.device)
        before = torch.cuda.memory_allocated(self.device)
        self(item.batch)
        per_object = (torch.cuda.max_memory_allocated(self.device) - before) / len(item.object_ids)
        free, _ = torch.cuda.mem_get_info(self.device)
        return fitting_batch_size(free, per_object, (self.size or batch_size) * PROBE_GROWTH)


def fitting_batch_size(free_bytes: float, bytes_per_object: float, largest: int, headroom: float = 0.8) -> int:
    """The largest power of two (at least 1, at most `largest`) whose objects take at most `headroom`
    of `free_bytes`."""
    fits = int(headroom * free_bytes / max(bytes_per_object, 1.0))
    size = 1
    while size * 2 <= min(fits, largest):
        size *= 2
    return size


def _objects(batch: dict[str, torch.Tensor], start: int, stop: int, n: int) -> dict[str, torch.Tensor]:
    """Objects start:stop of a batch (every tensor's first axis runs over its n objects)."""
    return batch if (start, stop) == (0, n) else {k: v[start:stop] for k, v in batch.items()}


def _out_of_memory(exc: Exception) -> bool:
    """A GPU or CPU allocation failure (the CPU allocator raises a plain RuntimeError)."""
    return isinstance(exc, torch.OutOfMemoryError) or "can't allocate memory" in str(exc) or "out of memory" in str(exc)


def _finite_only(model: str, item: StreamItem, embedded: dict[str, np.ndarray]) -> tuple[StreamItem, dict]:
    """Objects whose outputs are all finite; the others skipped with a reason. Inputs are checked
    finite, but a model can still overflow (fp16 autocast, extreme pixel values)."""
    if not embedded:
        return item, embedded
    bad = {key: ~np.isfinite(values.reshape(len(values), -1)).all(1) for key, values in embedded.items()}
    dropped = np.logical_or.reduce(list(bad.values()))
    if not dropped.any():
        return item, embedded
    issues = [Issue(object_id, "embedding", f"{model} gave NaN/inf in {', '.join(k for k in bad if bad[k][i])}",
                    SKIPPED) for i, object_id in enumerate(item.object_ids) if dropped[i]]
    kept = [object_id for i, object_id in enumerate(item.object_ids) if not dropped[i]]
    item = dataclasses.replace(item, object_ids=kept, issues=item.issues + issues)
    return item, {key: values[~dropped] for key, values in embedded.items()}


def _write_unit(manifest: Manifest, unit_id: int, parts: list[tuple[int, StreamItem, dict]], schema) -> None:
    ids = np.concatenate([np.asarray(item.object_ids, np.int64) for _, item, _ in parts])
    modalities = sorted({m for _, _, emb in parts for m in emb})
    matrices = {m: np.concatenate([emb[m] for _, _, emb in parts if m in emb]) for m in modalities}
    write_part(EmbeddingFiles(manifest.directory).part(unit_id), ids, matrices, schema)
    skipped = [asdict(issue) for _, item, _ in parts for issue in item.issues]
    manifest.add(unit_id, len(ids), skipped)


def _record_rejects(config: ResolvedConfig, model: str, manifest: Manifest) -> None:
    issues = [Issue(**issue) for entry in manifest.parts.values() for issue in entry["skipped"]]
    write_rejects(config.layout.data.rejects, f"embed:{model}", issues)


def _embed_inputs(config: ResolvedConfig, model: str) -> list[Path]:
    # index_meta holds the data's fingerprint: re-indexed changed data means embedding it afresh
    return [config.layout.data.index, config.layout.data.index_meta, config.layout.model(model).dir]


def _embed_outputs(config: ResolvedConfig, model: str) -> list[Path]:
    return [config.layout.embeddings(model).dir]


def _embed_units(config: ResolvedConfig, model: str) -> list[int]:
    settings = getattr(config.models, model).embed
    return [unit.unit_id for unit in plan_units(read_index_table(config.layout.data.dir), settings.rows_per_shard)]


def embed_shard(config: ResolvedConfig, shard) -> dict:
    """One shard of `embed:<model>` (an `fmb.run.executors.Shard`): its work units, those not yet done."""
    units = set(shard.units)
    return embed(config, shard.stage.partition(":")[2], unit_filter=units.__contains__)


def _finish_embedding(config: ResolvedConfig, log, model: str) -> dict:
    """After every shard: nothing is left to embed; this writes the manifest and the rejects."""
    summary = embed(config, model)
    if not summary["complete"]:
        raise FmbError(f"embeddings of {model} are incomplete after every shard finished; rerun `fmb embed {model}`")
    return summary


#: Stage 2, once per model of run.models; as shards of work units under an executor.
EMBED = ModelStage("embed", lambda config, log, model: embed(config, model), ("models.{model}", "data", "seed"),
                   _embed_inputs, _embed_outputs, after=("adapt:{model}",),
                   sharding=Sharding(_embed_units, embed_shard, _finish_embedding))

"""Embedding throughput: the original research code's way vs fmb's extraction, side by side.

For each model, on the same synthetic objects and the same random weights:

* original: fp32, the original batch sizes (AstroPT 16, AION 1, AstroCLIP 16), rows read, checked
  and preprocessed in the main process between forward passes (no prefetch), AstroPT running all
  blocks (`get_embeddings`) although it reads the middle one;
* fmb: `fmb.embed.extract.embed` — DataLoader workers prefetching preprocessed batches, larger
  batches, bf16 autocast on GPU, AstroPT stopping at the block it reads.

Prints objects/s for both and the ratio. Usage:

    python benchmarks/embed_throughput.py --preset full --n 256          # real-size models (GPU)
    python benchmarks/embed_throughput.py --preset tiny --n 256          # CPU smoke figures
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from fmb.config import load_config
from fmb.data.index import ObjectIndex
from fmb.data.sources import open_source
from fmb.data.synth import synthesize
from fmb.data.tasks import index
from fmb.data.validate import RowChecker
from fmb.embed.extract import embed
from fmb.models.base import pick_device
from fmb.models.registry import build_encoder

ORIGINAL_BATCH = {"astropt": 16, "aion": 1, "astroclip": 16}


def original_loop(encoder, source, object_index: ObjectIndex, batch_size: int, device: torch.device) -> int:
    """The original pattern: sequential read -> check -> preprocess -> fp32 forward, no overlap."""
    checker, done = RowChecker(), 0
    ids = list(object_index.ids)
    locations = object_index.locate(ids)
    for start in range(0, len(ids), batch_size):
        chunk = locations[start : start + batch_size]
        rows = [source.read_rows(shard, [row])[0] for shard, row in chunk]  # one object at a time
        samples = [s for s in (checker.check(r)[0] for r in rows) if s is not None and encoder.preprocessor.usable(s) is None]
        if not samples:
            continue
        batch = {k: v.to(device) for k, v in encoder.preprocessor(samples).items()}
        with torch.no_grad():
            if encoder.name == "astropt":  # all blocks, as `get_embeddings` does
                inputs = {k: v for k, v in batch.items() if k != "object_id"}
                tokens = encoder.gpt.get_embeddings(inputs)
                [t.mean(1).cpu() for t in tokens.values()]
            else:
                [t.cpu() for t in encoder.embed(batch).values()]
        done += len(samples)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return done


def measure(model: str, config, device: torch.device) -> tuple[float, float]:
    encoder = build_encoder(config, model, weights="base").to(device).eval()
    source = open_source(config)
    object_index = ObjectIndex.load(config.layout.data.dir)
    original_loop(encoder, source, ObjectIndex(object_index_table(config, 8)), ORIGINAL_BATCH[model], device)  # warm-up
    started = time.perf_counter()
    n_original = original_loop(encoder, source, object_index, ORIGINAL_BATCH[model], device)
    original = n_original / (time.perf_counter() - started)
    started = time.perf_counter()
    summary = embed(config, model)
    fmb = summary["objects"] / (time.perf_counter() - started)
    return original, fmb


def object_index_table(config, n: int):
    import pyarrow.parquet as pq

    return pq.read_table(config.layout.data.index).slice(0, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--preset", choices=["full", "tiny"], default="full")
    parser.add_argument("--models", nargs="+", default=["astropt", "aion", "astroclip"])
    parser.add_argument("--batch-size", type=int, default=64, help="fmb's batch size")
    parser.add_argument("--workers", type=int, default=4, help="fmb's DataLoader workers")
    args = parser.parse_args()
    device = pick_device("auto")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "fmb.yaml").write_text("name: bench\n")
        synthesize(root / "survey", args.n, seed=3, workers=2)
        sets = ["data.source=survey"]
        for model in args.models:
            sets += [f"models.{model}.preset={args.preset}", f"models.{model}.weights=random",
                     f"models.{model}.embed.batch_size={args.batch_size}", f"models.{model}.embed.num_workers={args.workers}",
                     f"models.{model}.embed.rows_per_shard={args.n}"]
        config = load_config(root=root, sets=sets)
        index(config)
        print(f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}  "
              f"torch threads: {torch.get_num_threads()}  preset: {args.preset}  objects: {args.n}")
        print(f"{'model':10s} {'original obj/s':>15s} {'fmb obj/s':>10s} {'ratio':>7s}")
        for model in args.models:
            original, fmb = measure(model, config, device)
            print(f"{model:10s} {original:15.1f} {fmb:10.1f} {fmb / original:7.2f}x", flush=True)


if __name__ == "__main__":
    main()

"""Wall time of `fmb embed` and `fmb detect` run as 1, 2 and 4 shards in parallel on this machine
(executor.kind=local, executor.workers=shards), and the per-object throughput a cluster projection
starts from.

One synthetic survey is made and indexed once; each shard count then embeds it into a fresh run
(`name=shardsK`, every run adapted from the same weights) and scores it. Every run must give the
same embeddings and scores object for object (checked here): sharding changes where work runs,
never what it computes.

    python benchmarks/shard_scaling.py --n 4000 --model astropt --workdir /tmp/fmb-shard-scaling
"""

from __future__ import annotations

import argparse
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from fmb.config import load_config
from fmb.embed.store import load_embeddings
from fmb.run import run_one
from fmb.run.stages import stage_named

SETTINGS = ["models.{model}.preset=tiny", "models.{model}.embed.num_workers=0", "models.{model}.embed.rows_per_shard=250",
            "models.{model}.adapt.num_workers=0"]


def settings(model: str, n: int, name: str, shards: int) -> list[str]:
    return [s.format(model=model) for s in SETTINGS] + [
        f"synth.n={n}", "synth.workers=2", f"run.models=[{model}]", f"name={name}", f"executor.workers={shards}",
        f"executor.shards={shards}", "detect.folds=3", "detect.pca_components=32", "detect.flow.hidden=32",
        "detect.flow.min_steps=200", "detect.flow.max_steps=200", "detect.max_fit=20000"]


def stage(config, name: str) -> float:
    started = time.perf_counter()
    run_one(config, stage_named(config, name), lambda line: None, True)
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=4000)
    parser.add_argument("--model", default="astropt")
    parser.add_argument("--shards", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fmb-shard-scaling"))
    args = parser.parse_args()
    if args.workdir.exists():
        shutil.rmtree(args.workdir)
    args.workdir.mkdir(parents=True)
    (args.workdir / "fmb.yaml").write_text("data:\n  source: data/synth\nsynth:\n  out: data/synth\n")
    os.chdir(args.workdir)
    base = load_config(root=args.workdir, sets=settings(args.model, args.n, "base", 1))
    for name in ("synth", "index", f"adapt:{args.model}"):
        stage(base, name)
    print(f"{args.n} objects, {args.model} (tiny preset), this machine ({os.cpu_count()} cores)")
    print(f"{'shards':>6s} {'embed s':>8s} {'obj/s':>7s} {'detect s':>9s} {'obj/s':>7s}")
    reference = None
    for shards in args.shards:
        config = load_config(root=args.workdir, sets=settings(args.model, args.n, f"shards{shards}", shards))
        shutil.copytree(base.layout.model(args.model).dir, config.layout.model(args.model).dir)
        stage(config, "index")
        embed_s = stage(config, f"embed:{args.model}")
        detect_s = stage(config, "detect")
        ids, matrices = load_embeddings(config.layout.embeddings(args.model).dir)
        scores = pq.read_table(config.layout.scores.table(args.model)).to_pandas()
        if reference is None:
            reference = ids, matrices, scores
        else:
            np.testing.assert_array_equal(ids, reference[0])
            for modality, values in matrices.items():
                np.testing.assert_array_equal(values, reference[1][modality])
            assert scores.equals(reference[2]), "scores differ between shard counts"
        print(f"{shards:>6d} {embed_s:8.1f} {len(ids) / embed_s:7.1f} {detect_s:9.1f} {len(ids) / detect_s:7.1f}",
              flush=True)
    print("every shard count gave the same embeddings and scores, object for object")


if __name__ == "__main__":
    main()

"""Embedding throughput, side by side in one run: the original's loop, today's fmb and this fmb.

For each model, on the same synthetic objects and the same weights, three columns, each in its own
fresh process (so each has its own peak memory) and run one after another per model, `--repeats` times
interleaved (so the machine's load falls on all three alike; the median rate is shown):

* original: the original research code's loop (reference_fmb.md section 5) on the package modules as
  they are: fp32, the original batch sizes (AstroPT 16, AION 1, AstroCLIP 16), rows read, checked and
  preprocessed in the main process between forward passes, AION's three `encode` calls (image, spectrum,
  both), AstroPT running all blocks (`get_embeddings`) although it reads the middle one. It runs on
  the fmb of `--base` (its models are the unswapped package modules there);
* today: `fmb.embed.extract.embed` of the fmb in `--base` (a `git worktree add` of an earlier commit);
* fmb: `fmb.embed.extract.embed` of the fmb in `--src` (default: this checkout).

Objects/s exclude the model's loading (timed apart), include everything else: reading, checking,
preprocessing, the model, writing. Peak memory is the resident set of the process (and, apart, of its
largest DataLoader worker). Weights are random (hub weights cannot be fetched here); at the full presets
AION's are the size of AION-base (ViT-B-like 12+12 blocks of 768, the default-size codecs), saved as a
local snapshot and loaded through the real loading code by both fmb versions.

    git worktree add /tmp/fmb_base <commit>
    python benchmarks/embed_throughput.py --preset tiny --n 256 --base /tmp/fmb_base/src --repeats 3
    python benchmarks/embed_throughput.py --preset full --n 16 --base /tmp/fmb_base/src
    python benchmarks/embed_throughput.py --preset full --n 512      # fmb alone (e.g. on a GPU)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ORIGINAL_BATCH = {"astropt": 16, "aion": 1, "astroclip": 16}
COLUMNS = ("original", "today", "fmb")
#: The demo's tiny settings (configs/adapt/tiny.yaml), and fmb's defaults at the full presets.
PRESET_SETS = {
    "tiny": {"aion": ["preset=tiny", "adapter_hidden=8", "embed.batch_size=32"],
             "astropt": ["preset=tiny", "image_size=64", "embed.batch_size=64"],
             "astroclip": ["preset=tiny", "embed.batch_size=64"]},
    "full": {"aion": ["preset=full", "embed.batch_size=8"],
             "astropt": ["preset=full", "weights=random", "embed.batch_size=8"],
             "astroclip": ["preset=full", "weights=random", "embed.batch_size=8"]},
}
AION_BASE = dict(dim=768, encoder_depth=12, decoder_depth=12, num_heads=12, mlp_ratio=4.0, qkv_bias=False,
                 proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU", gated_mlp=True, qk_norm=False)


# -- the parent: data, weights, the columns, the table ------------------------------------------------
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256, help="objects")
    parser.add_argument("--preset", choices=["full", "tiny"], default="tiny")
    parser.add_argument("--models", nargs="+", default=["aion", "astropt", "astroclip"])
    parser.add_argument("--base", type=Path, help="src/ of today's fmb (a git worktree); without it only fmb's column")
    parser.add_argument("--src", type=Path, default=Path(__file__).resolve().parents[1] / "src", help="src/ of this fmb")
    parser.add_argument("--columns", nargs="+", choices=COLUMNS, default=list(COLUMNS))
    parser.add_argument("--workers", type=int, default=1, help="fmb's DataLoader workers (both versions)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each column, interleaved; the median rate is shown")
    parser.add_argument("--column", help=argparse.SUPPRESS)  # internal: run one column in this process
    parser.add_argument("--model", help=argparse.SUPPRESS)
    parser.add_argument("--project", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--sets", nargs="*", default=[], help=argparse.SUPPRESS)
    parser.add_argument("--count", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.base is None:
        args.columns = ["fmb"]
    if args.column:
        print("RESULT " + json.dumps(run_column(args.column, args.model, args.project, args.sets, args.count)), flush=True)
        return
    import torch

    with tempfile.TemporaryDirectory(prefix="embed_throughput_") as tmp:
        tmp = Path(tmp)
        sys.path.insert(0, str(args.src))
        from fmb.data.synth import synthesize

        synthesize(tmp / "survey", args.n, seed=3, workers=2)
        weights = {"aion": [f"weights={plant_aion_base(tmp / 'aion-base')}"]} if args.preset == "full" and "aion" in args.models else {}
        device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
        print(f"preset {args.preset}, {args.n} objects, {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the start; "
              f"today = {args.base}, fmb = {args.src}")
        peak = matmul_peak()
        print(f"matrix-product peak of this device, measured now: {peak['flops'] / 1e9:.0f} GFLOP/s ({peak['dtype']}, "
              f"{peak['size']}x{peak['size']}, the best of {peak['repeats']} products)")
        print(f"{'model':10s} " + " ".join(f"{c + ' obj/s':>14s} {'peak MB':>8s}" for c in args.columns)
              + "  fmb/today  fmb/original")
        for model in args.models:
            sets = [f"models.{model}.{s}" for s in PRESET_SETS[args.preset][model] + weights.get(model, [])]
            sets += [f"models.{model}.embed.num_workers={args.workers}", f"models.{model}.embed.rows_per_shard={args.n}",
                     f"data.source={tmp / 'survey'}"]
            runs = {column: [] for column in args.columns}
            for repeat in range(args.repeats):  # interleaved: A B C A B C, so the load falls on every column alike
                for column in args.columns:
                    count = column == "fmb" and repeat == 0  # the model's FLOPs per object, counted once
                    runs[column].append(spawn(column, model, tmp / f"{model}-{column}-{repeat}", sets, args, count))
            results = {column: _median_run(done) for column, done in runs.items()}
            print(f"{model:10s} " + " ".join(f"{r['rate']:14.4g} {r['peak_mb']:8.0f}" for r in results.values())
                  + "".join(f"  {results['fmb']['rate'] / results[c]['rate']:9.2f}x" for c in ("today", "original")
                            if c in results and "fmb" in results), flush=True)
            print(f"{'':10s} {utilisation(results['fmb'], peak)}", flush=True)
            if args.repeats > 1:
                print(f"{'':10s} every run's obj/s: " + "; ".join(f"{c} {r['rates']}" for c, r in results.items()), flush=True)
        print(f"load average {os.getloadavg()[0]:.1f} at the end")


def matmul_peak(size: int = 4096, repeats: int = 8) -> dict:
    """What the device computes at best: the fastest of `repeats` square matrix products, in the dtype fmb
    computes in there (bf16 on a GPU that computes it natively, fp32 otherwise). The denominator of the
    model FLOPs utilisation (MFU) printed beside each model; a spec sheet's peak would be higher."""
    import torch

    from fmb.models.base import autocast_dtype, pick_device

    device = pick_device("auto")
    dtype = autocast_dtype("auto", device) or torch.float32
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(repeats + 1):  # the first warms up
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - started)
    return {"flops": 2 * size**3 / best, "dtype": str(dtype).removeprefix("torch."), "size": size, "repeats": repeats}


def utilisation(result: dict, peak: dict) -> str:
    if not result.get("flops"):
        return "model FLOPs not counted"
    achieved = result["flops"] * result["rate"]
    return (f"fmb: {result['flops'] / 1e9:.1f} GFLOP per object (counted), {achieved / 1e9:.1f} GFLOP/s achieved, "
            f"{achieved / peak['flops']:.0%} of the measured peak (MFU)")


def _median_run(runs: list[dict]) -> dict:
    """The run of median rate (the lower middle one of an even count) and the largest peak memory."""
    middle = sorted(runs, key=lambda r: r["rate"])[(len(runs) - 1) // 2]
    flops = next((r["flops"] for r in runs if r.get("flops")), None)
    return {**middle, "peak_mb": max(r["peak_mb"] for r in runs), "rates": [round(r["rate"], 4) for r in runs], "flops": flops}


def spawn(column: str, model: str, project: Path, sets: list[str], args, count: bool = False) -> dict:
    """One column in a fresh process, importing the fmb of `--base` (original, today) or `--src`."""
    project.mkdir()
    (project / "fmb.yaml").write_text("name: bench\n")
    src = args.src if column == "fmb" else args.base
    env = {**os.environ, "PYTHONPATH": str(src)}
    if column == "fmb":  # as the `fmb` command runs it (earlier fmbs did not set it)
        from fmb.cli import sleeping_openmp_threads  # this checkout's: a child imports the fmb of its column

        sleeping_openmp_threads(env)
    command = [sys.executable, __file__, "--column", column, "--model", model,
               "--project", str(project), *(["--count"] if count else []), "--sets", *sets]
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise SystemExit(f"{model} {column} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def plant_aion_base(directory: Path) -> Path:
    """AION-base-sized random weights (image + DESI spectrum domains) and default-size codecs, saved in
    the hub repository's layout, loaded by fmb's local-snapshot path. Seeded: the same for every column."""
    import torch
    from aion import AION
    from aion.codecs import ImageCodec, SpectrumCodec
    from aion.modalities import DESISpectrum, HSCImage

    torch.manual_seed(0)
    domains = ["tok_image_hsc", "tok_spectrum_desi"]
    AION(dict(domains_in=domains, domains_out=domains, **AION_BASE)).save_pretrained(directory)
    ImageCodec(quantizer_levels=[7, 5, 5, 5, 5]).save_pretrained(directory, modality=HSCImage)
    SpectrumCodec(embedding_dim=10, latent_channels=768).save_pretrained(directory, modality=DESISpectrum)
    return directory


# -- one column, in its own process -------------------------------------------------------------------
def run_column(column: str, model: str, project: Path, sets: list[str], count: bool = False) -> dict:
    from fmb.config import load_config
    from fmb.data.tasks import index

    config = load_config(root=project, sets=sets)
    index(config)
    if column == "original":
        objects, seconds = original_loop(config, model)
    else:
        objects, seconds = fmb_embed(config, model)
    flops = count_flops(config, model) if count else None
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    workers_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"objects": objects, "seconds": seconds, "rate": objects / seconds, "peak_mb": self_kb / 1024,
            "worker_peak_mb": workers_kb / 1024, "flops": flops}


def fmb_embed(config, model: str) -> tuple[int, float]:
    """`embed` as `fmb embed` runs it, less the time it spends loading the model."""
    from fmb.embed import extract

    loading = []
    build = extract.build_encoder

    def timed_build(*a, **k):
        started = time.perf_counter()
        encoder = build(*a, **k)
        loading.append(time.perf_counter() - started)
        return encoder

    extract.build_encoder = timed_build
    started = time.perf_counter()
    summary = extract.embed(config, model)
    return summary["objects"], time.perf_counter() - started - sum(loading)


def count_flops(config, model: str, objects: int = 4) -> float:
    """The model's FLOPs per object in one `embed` call on `objects` objects, counted with torch's FLOP
    formulas (`torch.utils.flop_counter`: matrix products, convolutions, attention; element-wise work
    is not counted). The CPU's fused attention kernel has no formula in torch: it is counted as the two
    matrix products it computes (a causal mask's skipped half included, as torch counts attention)."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils.flop_counter import flop_registry, sdpa_flop_count, shape_wrapper

    from fmb.models.registry import build_encoder

    def attention(query, key, value, *_, out_shape=None, **__) -> int:
        return sdpa_flop_count(query, key, value)

    formulas = {**flop_registry, torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: shape_wrapper(attention)}

    class Counter(TorchDispatchMode):  # FlopCounterMode's own module tracker cannot run under inference_mode
        total = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            formula = formulas.get(func._overloadpacket)
            if formula is None:  # a composite op (linear, under inference_mode): counted through its parts
                with self:
                    decomposed = func.decompose(*args, **kwargs)
                if decomposed is not NotImplemented:
                    return decomposed
            out = func(*args, **kwargs)
            if formula is not None:
                Counter.total += formula(*args, **kwargs, out_val=out)
            return out

    encoder = build_encoder(config, model, weights="base").eval()
    batch = encoder.preprocessor(_samples(config, encoder, objects))
    with torch.inference_mode(), Counter():
        encoder.embed(batch)
    return Counter.total / len(batch["object_id"])


def _samples(config, encoder, n: int) -> list:
    """The first `n` objects the encoder can use, read and checked as fmb reads them."""
    from fmb.data.index import ObjectIndex
    from fmb.data.sources import open_source
    from fmb.data.validate import RowChecker

    source, checker = open_source(config), RowChecker()
    object_index = ObjectIndex.load(config.layout.data.dir)
    samples = []
    for shard, row in object_index.locate(list(object_index.ids)):
        sample = checker.check(source.read_rows(shard, [row])[0])[0]
        if sample is not None and encoder.preprocessor.usable(sample) is None:
            samples.append(sample)
        if len(samples) == n:
            return samples
    return samples


def original_loop(config, model: str) -> tuple[int, float]:
    """The original pattern: one object read at a time -> check -> preprocess -> fp32 forward, no overlap."""
    import torch
    from fmb.data.index import ObjectIndex
    from fmb.data.sources import open_source
    from fmb.data.validate import RowChecker
    from fmb.models.registry import build_encoder

    encoder = build_encoder(config, model, weights="base").eval()
    source, checker, done = open_source(config), RowChecker(), 0
    object_index = ObjectIndex.load(config.layout.data.dir)
    ids = list(object_index.ids)
    locations = object_index.locate(ids)
    batch_size = ORIGINAL_BATCH[model]
    started = time.perf_counter()
    for start in range(0, len(ids), batch_size):
        rows = [source.read_rows(shard, [row])[0] for shard, row in locations[start : start + batch_size]]
        samples = [s for s in (checker.check(r)[0] for r in rows) if s is not None and encoder.preprocessor.usable(s) is None]
        if not samples:
            continue
        batch = encoder.preprocessor(samples)
        with torch.no_grad():
            if model == "astropt":  # all blocks, as `get_embeddings` does
                tokens = encoder.gpt.get_embeddings({k: v for k, v in batch.items() if k != "object_id"})
                [t.mean(1).cpu() for t in tokens.values()]
            else:
                [t.cpu() for t in encoder.embed(batch).values()]
        done += len(samples)
    return done, time.perf_counter() - started


if __name__ == "__main__":
    main()

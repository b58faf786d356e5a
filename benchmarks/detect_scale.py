"""The real `fmb detect` stage at survey scale, against the original method, side by side.

Embeddings are written as a run's embedding parts (3 modalities x 768-d, 50k rows a part), the way
`fmb embed` leaves them; the stage then runs as users run it (`fmb detect`, every configured method
on every modality, the residuals, the misalignment critic, calibration, fusion, the merge), each
measurement in its own process so that its peak memory is its own.

* fmb: the detect stage with every default detector (flow, iforest, lof, knn, ecod) on every
  modality, the PCA residuals, the misalignment critic, fit on a 50k sample, parts scored one at a
  time, then merged, in one process (`executor.workers=1`). The training lengths are the demo's
  (--set, default: 3 folds, flows of 200-400 steps, critic of at most 600 steps), since the
  defaults' fixed fitting cost (15 flows of up to 2000 steps) takes over 15 minutes on two cores
  and says nothing about how the stage scales with N.
* original (reference_fmb.md §6.1 and §6.2): every embedding loaded into memory, per modality PCA
  100 + standardise + clip, a normflows RealNVP trained in-sample (batch 24, 5 epochs, Adam 1e-4),
  then the cosine misalignment. Its cost is exactly proportional to N (5 N / 24 optimiser steps per
  modality) and its memory holds all N x 3 x 768 floats.

Both run at --compare-n (the largest N the original finishes in reasonable time here); fmb alone
runs at --n as well, and the original's time there is extrapolated from its measured per-object
cost and printed as such.

    python benchmarks/detect_scale.py --n 1000000 --compare-n 100000 --workdir /tmp/fmb-detect-scale
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

DIM, LATENT, PART_ROWS = 768, 16, 50_000
MODALITIES = ("image", "spectrum", "joint")
MODEL = "aion"  # any registered encoder: detect reads only its embeddings (AION-base is 768-d)


def _mappings(seed: int = 0) -> dict:
    """One fixed non-linear map per modality from a shared 16-d latent: image and spectrum of an
    object are paired (the critic has something to learn), the joint mixes both."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(8, LATENT)) * 3
    return {"centres": centres, **{m: rng.normal(size=(LATENT, DIM)) / np.sqrt(LATENT) for m in MODALITIES}}


def part_rows(part: int, rows: int, mappings: dict) -> dict[str, np.ndarray]:
    rng = np.random.default_rng([7, part])
    z = mappings["centres"][rng.integers(0, len(mappings["centres"]), rows)] + rng.normal(size=(rows, LATENT))
    out = {}
    for modality in MODALITIES:
        h = z @ mappings[modality]
        out[modality] = (np.tanh(h) + 0.3 * h**2 + 0.05 * rng.normal(size=(rows, DIM))).astype(np.float32)
    return out


def write_survey(project: Path, n: int) -> None:
    """A project whose run `bench` holds n objects' embeddings as parts + manifest."""
    from fmb.config import load_config
    from fmb.embed.store import Manifest, write_part
    from fmb.layout import EmbeddingFiles

    (project / "fmb.yaml").write_text(f"name: bench\nrun:\n  models: [{MODEL}]\n")
    directory = load_config(root=project).layout.embeddings(MODEL).dir
    if EmbeddingFiles(directory).manifest.is_file():
        return
    manifest = Manifest.open(directory, {"model": MODEL, "synthetic": "benchmarks/detect_scale.py", "n": n})
    mappings = _mappings()
    for part, start in enumerate(range(0, n, PART_ROWS)):
        rows = min(PART_ROWS, n - start)
        write_part(EmbeddingFiles(directory).part(part), np.arange(start, start + rows), part_rows(part, rows, mappings))
        manifest.add(part, rows, [])
    manifest.merge()


def run_fmb(project: Path) -> dict:
    """Child process: the detect stage through the engine, as `fmb detect` runs it."""
    from fmb.config import load_config
    from fmb.run import run_one
    from fmb.run.stages import stage_named

    config = load_config(root=project, sets=["executor.workers=1", *json.loads(os.environ["FMB_BENCH_SETS"])])
    started = time.perf_counter()
    outcome = run_one(config, stage_named(config, "detect"), lambda line: None, True)
    seconds = time.perf_counter() - started
    summary = outcome.result[MODEL]
    return {"seconds": seconds, "objects": summary["objects"], "stage_seconds": summary["seconds"]}


def run_original(project: Path) -> dict:
    """Child process: reference_fmb.md §6.1 (in-sample RealNVP per modality) and §6.2 (cosine)."""
    from fmb.config import load_config
    from fmb.embed.store import load_embeddings

    ids, matrices = load_embeddings(load_config(root=project).layout.embeddings(MODEL).dir)  # all in memory
    started = time.perf_counter()
    for modality in MODALITIES:
        _realnvp_in_sample(matrices[modality])
    image, spectrum = matrices["image"], matrices["spectrum"]
    _ = 1 - (image * spectrum).sum(1) / (np.linalg.norm(image, axis=1) * np.linalg.norm(spectrum, axis=1))
    return {"seconds": time.perf_counter() - started, "objects": len(ids)}


def _realnvp_in_sample(x: np.ndarray) -> np.ndarray:
    import normflows as nf
    import torch
    from sklearn.decomposition import PCA

    x = PCA(100, random_state=42).fit_transform(x)
    x = (x - x.mean(0)) / np.maximum(x.std(0, ddof=1), 1e-6)
    x = np.clip(x, -8, 8).astype(np.float32)
    torch.manual_seed(42)
    dim = x.shape[1]
    layers = []
    for _ in range(4):
        layers += [nf.flows.AffineCouplingBlock(nf.nets.MLP([dim // 2, 16, 16, 2 * (dim - dim // 2)], init_zeros=True),
                                                scale_map="sigmoid"), nf.flows.Permute(dim, mode="swap"),
                   nf.flows.ActNorm(dim)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    data = torch.from_numpy(x)
    for _ in range(5):
        for batch in torch.randperm(len(x)).split(24):
            loss = -model.log_prob(data[batch]).mean()
            if torch.isfinite(loss):
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
    with torch.no_grad():
        return torch.cat([model.log_prob(batch) for batch in data.split(2048)]).numpy()


def measure(kind: str, project: Path, sets: list[str]) -> dict:
    """Run one measurement in a fresh process; its result and its own peak RSS."""
    command = [sys.executable, __file__, "--child", kind, "--workdir", str(project)]
    environment = os.environ | {"FMB_BENCH_SETS": json.dumps(sets)}
    output = subprocess.run(command, check=True, capture_output=True, text=True, env=environment).stdout
    return json.loads(output.strip().splitlines()[-1])


def child(kind: str, project: Path) -> None:
    import torch

    torch.set_num_threads(2)
    result = (run_fmb if kind == "fmb" else run_original)(project)
    result["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=1_000_000, help="objects for fmb alone")
    parser.add_argument("--compare-n", type=int, default=100_000,
                        help="objects for both, side by side (0: fmb alone, at --n only)")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/fmb-detect-scale"))
    parser.add_argument("--set", nargs="*", default=["detect.folds=3", "detect.flow.min_steps=200",
                                                      "detect.flow.max_steps=400", "detect.flow.hidden=32",
                                                      "detect.mismatch.max_steps=600"],
                        help="detect settings (key=value) for fmb's run")
    parser.add_argument("--child", choices=["fmb", "original"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args.child, args.workdir)
    print(f"fmb detect settings: {' '.join(args.set)}", flush=True)
    rows = []
    for n in sorted({args.compare_n, args.n} - {0}):
        project = args.workdir / f"n{n}"
        project.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        write_survey(project, n)
        print(f"N={n:,d}: embeddings written in {time.perf_counter() - started:.0f} s "
              f"({n * 3 * DIM * 4 / 1e9:.1f} GB of float32)", flush=True)
        fmb = measure("fmb", project, args.set)
        original = measure("original", project, args.set) if n == args.compare_n else None
        rows.append((n, fmb, original))
        print(f"  fmb detect: {fmb['seconds']:.0f} s, peak RSS {fmb['peak_rss_gb']:.2f} GB; stage seconds "
              f"{json.dumps({k: round(v) for k, v in fmb['stage_seconds'].items()})}", flush=True)
        if original:
            print(f"  original:   {original['seconds']:.0f} s, peak RSS {original['peak_rss_gb']:.2f} GB", flush=True)
    per_object = next((o["seconds"] / n for n, _, o in rows if o), None)
    print(f"\n{'N':>10s} {'fmb s':>8s} {'fmb GB':>7s} {'original s':>22s} {'original GB':>12s} {'ratio':>20s}")
    for n, fmb, original in rows:
        if original:
            print(f"{n:>10,d} {fmb['seconds']:8.0f} {fmb['peak_rss_gb']:7.2f} {original['seconds']:22.0f} "
                  f"{original['peak_rss_gb']:12.2f} {original['seconds'] / fmb['seconds']:19.2f}x")
        elif per_object is None:
            print(f"{n:>10,d} {fmb['seconds']:8.0f} {fmb['peak_rss_gb']:7.2f} {'not run':>22s}")
        else:
            guess = per_object * n
            print(f"{n:>10,d} {fmb['seconds']:8.0f} {fmb['peak_rss_gb']:7.2f} {guess:10.0f} (extrapolated) "
                  f"{'not run':>12s} {guess / fmb['seconds']:8.2f}x (extrapolated)")


if __name__ == "__main__":
    main()

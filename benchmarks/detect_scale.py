"""Density scoring at survey scale: fmb's cross-fitted flow vs the original method, side by side.

Synthetic 768-d embeddings (a 16-d Gaussian mixture pushed through a fixed random non-linear map,
plus noise) are generated in chunks, so nothing ever holds all N x 768 values at once.

* fmb: PCA + flow fitted on a 100k sample with k-fold cross-fitting, then every object scored
  in streaming chunks (`fmb.detect.density`).
* original (reference_fmb.md §6.1): normflows RealNVP, 4 affine couplings with hidden 16, PCA 100,
  standardise, clip 8 sigma, batch 24, Adam 1e-4, 5 epochs over *all* rows, scored in-sample. Its
  time is measured at the sizes given by --original-sizes; beyond them it is extrapolated linearly
  (its cost is exactly proportional to N: 5 N / 24 optimiser steps) and marked as such.

    python benchmarks/detect_scale.py                       # N = 100k, 300k, 1M
"""

from __future__ import annotations

import argparse
import resource
import time
from functools import partial

import numpy as np
import torch

from fmb.detect.density import CrossFitted, Reducer
from fmb.detect.methods.flow import FlowDetector

DIM, LATENT, CHUNK = 768, 16, 50_000


def _mapping(seed: int = 0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(8, LATENT)) * 3, rng.normal(size=(LATENT, DIM)) / np.sqrt(LATENT)


def embeddings(start: int, stop: int, mapping) -> np.ndarray:
    """Rows [start, stop) of the synthetic survey, each chunk from its own seed (any chunking agrees)."""
    centres, project = mapping
    rows = []
    for chunk in range(start // CHUNK, (stop - 1) // CHUNK + 1):
        rng = np.random.default_rng([7, chunk])
        z = centres[rng.integers(0, len(centres), CHUNK)] + rng.normal(size=(CHUNK, LATENT))
        h = z @ project
        x = np.tanh(h) + 0.3 * h**2 + 0.05 * rng.normal(size=(CHUNK, DIM))
        lo, hi = max(start, chunk * CHUNK) - chunk * CHUNK, min(stop, (chunk + 1) * CHUNK) - chunk * CHUNK
        rows.append(x[lo:hi].astype(np.float32))
    return np.concatenate(rows)


def fmb_method(n: int, fit_size: int, folds: int, settings: dict, mapping) -> float:
    """Seconds spent fitting and scoring (generating the embeddings, i.e. reading them, excluded)."""
    fit_ids = np.sort(np.random.default_rng(0).choice(n, min(fit_size, n), replace=False))
    fit_x = _rows(fit_ids, mapping)
    started = time.perf_counter()
    reducer = Reducer(64, seed=0).fit(fit_x)
    detector = CrossFitted(partial(FlowDetector, **settings), folds, seed=0).fit(reducer.transform(fit_x), fit_ids)
    elapsed = time.perf_counter() - started
    del fit_x
    for start in range(0, n, CHUNK):
        ids = np.arange(start, min(n, start + CHUNK))
        chunk = embeddings(start, ids[-1] + 1, mapping)
        started = time.perf_counter()
        detector.score(reducer.transform(chunk), ids)
        elapsed += time.perf_counter() - started
    return elapsed


def _rows(ids: np.ndarray, mapping) -> np.ndarray:
    """The rows with the given sorted ids, read chunk by chunk."""
    out = []
    for chunk in np.unique(ids // CHUNK):
        block = embeddings(chunk * CHUNK, (chunk + 1) * CHUNK, mapping)
        out.append(block[ids[ids // CHUNK == chunk] - chunk * CHUNK])
    return np.concatenate(out)


def original_method(n: int, mapping) -> float:
    """reference_fmb.md §6.1, in-sample, as written there."""
    import normflows as nf
    from sklearn.decomposition import PCA

    x = embeddings(0, n, mapping)
    started = time.perf_counter()
    x = PCA(100, random_state=42).fit_transform(x)
    x = (x - x.mean(0)) / np.maximum(x.std(0, ddof=1), 1e-6)
    x = np.clip(x, -8, 8).astype(np.float32)
    torch.manual_seed(42)
    dim = x.shape[1]
    layers = []
    for _ in range(4):
        layers += [nf.flows.AffineCouplingBlock(nf.nets.MLP([dim // 2, 16, 16, 2 * (dim - dim // 2)], init_zeros=True),
                                                scale_map="sigmoid"), nf.flows.Permute(dim, mode="swap"), nf.flows.ActNorm(dim)]
    model = nf.NormalizingFlow(nf.distributions.DiagGaussian(dim), layers)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=1e-5)
    data = torch.from_numpy(x)
    for _ in range(5):
        for batch in torch.randperm(n).split(24):
            loss = -model.log_prob(data[batch]).mean()
            if torch.isfinite(loss):
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
                optimizer.step()
    with torch.no_grad():
        for batch in data.split(2048):
            model.log_prob(batch)
    return time.perf_counter() - started


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--original-sizes", type=int, nargs="+", default=[20_000, 60_000])
    parser.add_argument("--fit-size", type=int, default=100_000)
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--max-steps", type=int, default=600, help="optimiser steps per fold flow")
    args = parser.parse_args()
    torch.set_num_threads(2)
    mapping = _mapping()
    settings = {"min_steps": args.max_steps, "max_steps": args.max_steps}
    original = {n: original_method(n, mapping) for n in args.original_sizes}
    per_object = np.mean([t / n for n, t in original.items()])
    print("original method (normflows RealNVP, in-sample), measured:")
    for n, seconds in original.items():
        print(f"  N={n:>9,d}  {seconds:8.1f} s   ({1e6 * seconds / n:.0f} us/object)")
    print(f"\nfmb (fit on {args.fit_size:,d}, {args.folds}-fold cross-fitted MAF, {args.max_steps} steps/fold, streamed scoring)")
    print(f"{'N':>11s} {'fmb s':>8s} {'original s':>12s} {'speed-up':>9s} {'peak RSS GB':>12s}")
    for n in args.sizes:
        seconds = fmb_method(n, args.fit_size, args.folds, settings, mapping)
        reference = original.get(n, per_object * n)
        label = "" if n in original else " (extrapolated)"
        print(f"{n:>11,d} {seconds:8.1f} {reference:12.1f} {reference / seconds:8.1f}x {peak_rss_gb():12.2f}{label}", flush=True)


if __name__ == "__main__":
    main()

"""Saved size and fit+score time of each baseline detector: fmb's against PyOD's, side by side.

    python benchmarks/detector_sizes.py --n 20000 --dim 64
"""

from __future__ import annotations

import argparse
import io
import time

import numpy as np
import torch

from fmb.plugins import detector_class

PYOD = {"knn": ("pyod.models.knn", "KNN"), "lof": ("pyod.models.lof", "LOF"), "ecod": ("pyod.models.ecod", "ECOD")}


def measure(model, x: np.ndarray, score) -> tuple[float, float]:
    """(saved MB, seconds to fit and score x)."""
    started = time.perf_counter()
    model.fit(x)
    score(model, x)
    seconds = time.perf_counter() - started
    buffer = io.BytesIO()
    torch.save(model, buffer)
    return buffer.tell() / 1e6, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=64)
    args = parser.parse_args()
    x = np.random.default_rng(0).normal(size=(args.n, args.dim))
    print(f"{args.n} x {args.dim} (raw float32 {x.size * 4 / 1e6:.1f} MB); fit on x, then score x")
    print(f"{'detector':10s} {'fmb MB':>8s} {'PyOD MB':>8s} {'fmb s':>7s} {'PyOD s':>7s}")
    for name, (module, cls) in PYOD.items():
        ours = measure(detector_class(name)(), x, lambda m, data: m.score(data))
        theirs = measure(getattr(__import__(module, fromlist=[cls]), cls)(), x,
                         lambda m, data: m.decision_function(data))
        print(f"{name:10s} {ours[0]:8.1f} {theirs[0]:8.1f} {ours[1]:7.1f} {theirs[1]:7.1f}", flush=True)


if __name__ == "__main__":
    main()

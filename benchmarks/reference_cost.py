"""Embed cost of the physical reference against the pixel reference, side by side in one run.

Both references spend their time in their preprocessors (DataLoader workers in `fmb embed`): SEP
detection and deblending for both, then the pixel reference's stretch and resize, or the physical
reference's morphology and spectral measurements. On the same demo-sized objects (64 px cutouts
under the default realistic sky, `synth.sky`), each batch is preprocessed and embedded by one
reference then the other, alternately, so the machine's load falls on both alike; the PCA and the
standardisation are fitted first (not timed: adaptation is its own stage). The shared part, SEP
detection and deblending alone (`find_central`), is timed the same way, and each reference's own
part is printed as its total minus it.

    python benchmarks/reference_cost.py --n 256
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from fmb.config import SkyConfig
from fmb.data.synth.generate import Variant, get_context, make_object
from fmb.data.synth.sky import Sky
from fmb.data.validate import RowChecker
from fmb.models.measure.deblend import find_central
from fmb.models.physical import PhysicalEncoder, PhysicalSection
from fmb.models.pixels import PixelsEncoder, PixelsSection


SHARED = "shared (SEP detection and deblending)"


def samples(n: int, seed: int) -> list:
    ctx = get_context(64, Variant(sky=Sky(**SkyConfig().model_dump(exclude={"enabled"}))))
    checker = RowChecker()
    return [checker.check(make_object(i, "none", ctx, np.random.default_rng([seed, i]))[0])[0] for i in range(n)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=256)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    # preprocessors run in DataLoader workers, where torch uses one thread (on a loaded machine two
    # threads make a 1 ms resize take 6-20 ms, measured)
    torch.set_num_threads(1)
    objects = samples(args.n, 7)
    # the demo's settings (configs/adapt/tiny.yaml): 32 components of 32 px images for pixels
    encoders = {"pixels": PixelsEncoder(PixelsSection(components=32, image_size=32)),
                "physical": PhysicalEncoder(PhysicalSection())}
    for encoder in encoders.values():
        encoder.fit(encoder.preprocessor(objects))
    steps = {name: (lambda batch, encoder=encoder: encoder.embed(encoder.preprocessor(batch)))
             for name, encoder in encoders.items()}
    steps[SHARED] = lambda batch: [find_central(sample.bands) for sample in batch]
    seconds = dict.fromkeys(steps, 0.0)
    batches = [objects[k:k + args.batch] for k in range(0, len(objects), args.batch)]
    with torch.inference_mode():
        for _ in range(args.repeats):
            for batch in batches:
                for name, step in steps.items():
                    started = time.perf_counter()
                    step(batch)
                    seconds[name] += time.perf_counter() - started
    per_object = {name: 1e3 * spent / (args.repeats * len(objects)) for name, spent in seconds.items()}
    for name in encoders:
        print(f"{name:9s} {per_object[name]:6.2f} ms/object  ({1e3 / per_object[name]:6.1f} objects/s), "
              f"its own part {per_object[name] - per_object[SHARED]:5.2f} ms")
    print(f"{SHARED}: {per_object[SHARED]:.2f} ms/object")
    print(f"physical / pixels cost: {seconds['physical'] / seconds['pixels']:.2f}")


if __name__ == "__main__":
    main()

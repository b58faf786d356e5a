"""AION's two Euclid routes side by side: the reconstruction loss of the adapter route (`aion`:
U-Net adapters Euclid <-> HSC around the frozen codec) and of the native codec route (`aion_codec`:
the image codec's encoder and decoder retrained on VIS/Y/J/H, quantiser fixed), before and after a
brief adaptation of each, on the same validation objects (`fmb.models.aion_codec.route_losses`).

The survey is the development survey (seed 1101) of the synthetic generator; the models are the
tiny random-weight presets of configs/adapt/tiny.yaml unless --preset full (released weights from
the Hugging Face cache, a GPU). The loss is the MSE of the codec's central 96 px in Euclid
nanomaggies; lower is better. Usage:

    python benchmarks/codec_route.py --n 800 --out /tmp/codec_route
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from fmb.config import load_config
from fmb.data.tasks import INDEX, SYNTH
from fmb.models.aion_codec import ROUTES, route_losses
from fmb.models.tasks import ADAPT
from fmb.run.engine import execute, select

ROOT = Path(__file__).resolve().parents[1]
DEV_SEED = 1101


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=800, help="objects in the survey")
    parser.add_argument("--out", type=Path, default=Path("/tmp/fmb_codec_route"), help="project directory")
    parser.add_argument("--preset", choices=["tiny", "full"], default="tiny")
    parser.add_argument("--codec-train", choices=["all", "bands"], default="all")
    args = parser.parse_args()

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "fmb.yaml").write_text("name: codec_route\n")
    tasks = [ROOT / "configs/tasks/demo.yaml", ROOT / f"configs/adapt/{'tiny' if args.preset == 'tiny' else 'aion'}.yaml"]
    if args.preset == "full":
        tasks.append(ROOT / "configs/adapt/aion_codec.yaml")
    sets = [f"seed={DEV_SEED}", f"synth.n={args.n}", "synth.out=data/dev", "data.source=data/dev", "name=codec_route",
            f"models.aion_codec.codec_train={args.codec_train}"]
    config = load_config(tasks, root=args.out, sets=sets)

    for stage in (SYNTH, INDEX):  # skipped when already done for this survey
        execute(config, select([stage], only=stage.name, force=False), log=lambda _: None)
    initial = route_losses(config, weights="base")
    seconds = {}
    for model in ROUTES.values():
        started = time.perf_counter()
        stage = ADAPT.for_model(model)
        execute(config, select([stage], only=stage.name), log=lambda _: None)
        seconds[model] = time.perf_counter() - started
    adapted = route_losses(config)

    print(f"dev survey (seed {DEV_SEED}, {args.n} objects), preset {args.preset}, codec_train {args.codec_train}; "
          f"{adapted['codec']['objects']} validation objects; MSE of the central 96 px, Euclid nanomaggies")
    print(f"{'route':8s} {'model':11s} {'adapt settings':44s} {'initial':>9s} {'adapted':>9s} {'adapted/initial':>15s}"
          f" {'adapt s':>8s}")
    for route, model in ROUTES.items():
        s = config.section(f"models.{model}.adapt")
        settings = f"epochs {s.epochs}, max_objects {s.max_objects}, batch {s.batch_size}, lr {s.lr:g}"
        before, after = initial[route]["loss"], adapted[route]["loss"]
        print(f"{route:8s} {model:11s} {settings:44s} {before:9.3g} {after:9.3g} {after / before:15.3f}"
              f" {seconds[model]:8.0f}")
    ratio = adapted["codec"]["loss"] / adapted["adapter"]["loss"]
    print(f"adapted codec route / adapted adapter route: {ratio:.3g}x the loss; reconstructing nothing (all zeros) "
          f"scores {adapted['codec']['zero_loss']:.3g}")


if __name__ == "__main__":
    main()

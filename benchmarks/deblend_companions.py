"""What the deblender takes from each anomaly class, and what it took would have told.

The pixel and physical references measure the central source after SEP's deblending has replaced
every other source's pixels (`fmb.models.measure.deblend`). On a crowded sky that keeps a field
star or a neighbour from making an ordinary galaxy look odd; it also removes a merger's companion
and a lens's arcs. For each class of a synthetic survey (its `truth.parquet`), this prints

* how often the central source has a neighbour, is flagged blended, and the share of the cutout
  that cleaning replaces (`Central.replaced`);
* the AP (class against ordinary objects) of four single measurements of the sources within
  `--radius` pixels of the central one, which cleaning removes: their VIS flux over the central
  source's (log10 of 1 + it), their flux-weighted tangential alignment (-e cos 2(theta - phi): an
  arc bent around the centre is +e), their VIS/H colour against the central source's, and how
  many there are.

Only the classes asked for are printed (default: the development survey's seen classes), so that
the script can be pointed at the development survey without showing the other half.

    python benchmarks/deblend_companions.py bench/labelling_bandit/dev/data/dev
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.metrics import average_precision_score

from fmb.models.measure import deblend
from fmb.models.measure.deblend import find_central

BANDS = ("VIS_image", "NISP_Y_image", "NISP_J_image", "NISP_H_image")
SEEN = ("strong_lens", "mispaired", "merger", "image_artefact")
MEASURES = ("companion_flux", "tangential", "colour", "companions")


def companions(bands: np.ndarray, radius: float) -> dict[str, float]:
    """The crowding the deblender reports, the share of replaced pixels, and the four measures (SEP
    run again here with the deblender's settings, for its catalogue)."""
    central = find_central(bands)
    row = {"neighbour": float(central.covariates[0] > 0), "blended": float(central.covariates[3]),
           "replaced": float(central.replaced.mean()), **dict.fromkeys(MEASURES, 0.0)}
    sources, segmentation, index = _catalogue(bands, central)
    if index is None or len(sources) < 2:
        return row
    dx, dy = sources["x"] - central.centre[0], sources["y"] - central.centre[1]
    near = np.flatnonzero((dx**2 + dy**2 < radius**2) & (np.arange(len(sources)) != index))
    if not len(near):
        return row
    flux = np.clip(sources["flux"][near], 0.0, None)
    weight = flux / flux.sum() if flux.sum() > 0 else np.full(len(near), 1.0 / len(near))
    elongation = 1.0 - sources["b"][near] / np.maximum(sources["a"][near], 1e-12)
    tangential = -elongation * np.cos(2.0 * (sources["theta"][near] - np.arctan2(dy[near], dx[near])))
    residual = bands - central.background

    def colour(region: np.ndarray) -> float:
        floor = np.sqrt(max(int(region.sum()), 1)) * central.noise[[0, -1]]
        vis, h = np.maximum(residual[[0, -1]][:, region].sum(1), floor)
        return float(np.log10(vis / h))

    row.update(companion_flux=float(np.log10(1.0 + flux.sum() / max(float(sources["flux"][index]), 1e-12))),
               tangential=float(weight @ tangential), companions=float(len(near)),
               colour=colour(np.isin(segmentation, near + 1)) - colour(segmentation == index + 1))
    return row


def _catalogue(bands: np.ndarray, central) -> tuple[np.ndarray, np.ndarray, int | None]:
    vis = np.ascontiguousarray(bands[0])
    sources, segmentation = deblend.detect(vis, deblend._robust_sigma(vis[~central.blank]), central.blank)
    height, width = vis.shape
    return sources, segmentation, deblend._central_index(sources, segmentation, ((width - 1) / 2, (height - 1) / 2))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", type=Path, help="a synthetic survey's folder (part-*.parquet, truth.parquet)")
    parser.add_argument("--radius", type=float, default=30.0, help="pixels from the central source (3\" in VIS)")
    parser.add_argument("--classes", nargs="+", default=list(SEEN), help="the classes printed (default: dev's seen)")
    args = parser.parse_args()
    truth = pd.read_parquet(args.data / "truth.parquet").set_index("object_id")
    rows = {}
    for part in sorted(args.data.glob("part-*.parquet")):
        table = pq.read_table(part, columns=["object_id", *BANDS]).to_pydict()
        for k, object_id in enumerate(table["object_id"]):
            bands = np.stack([np.asarray(table[band][k], dtype=np.float64) for band in BANDS])
            rows[object_id] = companions(bands, args.radius)
    frame = pd.DataFrame.from_dict(rows, orient="index").join(truth["anomaly_class"])
    ordinary = frame[frame.anomaly_class == "none"]
    print(f"{len(frame)} objects, radius {args.radius:g} px")
    print(f"{'class':16s} {'n':>5s} {'neighbour':>9s} {'blended':>8s} {'replaced':>8s}   AP (x chance): "
          + "  ".join(MEASURES))
    for name in ["none", *args.classes]:
        members = frame[frame.anomaly_class == name]
        line = f"{name:16s} {len(members):5d} {members.neighbour.mean():9.2f} {members.blended.mean():8.2f} " \
               f"{members.replaced.mean():8.3f}"
        if name != "none":
            both = pd.concat([members, ordinary])
            truth_of = (both.anomaly_class == name).to_numpy()
            chance = truth_of.mean()
            scores = [average_precision_score(truth_of, both[measure]) for measure in MEASURES]
            line += "   " + "  ".join(f"{ap:.3f} ({ap / chance:.1f}x)" for ap in scores)
        print(line)


if __name__ == "__main__":
    main()

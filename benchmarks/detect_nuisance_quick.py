"""A reduced detect stage on a survey already embedded by `benchmarks/detect_quality.py`: the real
`score_objects` path (reducers, cross-fitted ECOD, the pixel reference's residuals, the ridge
misalignment, the redshift scores in each modality's channel, the nuisance-adjusted default) with
the cheap detectors only, for a machine too loaded to train the flows and the contrastive critic.
Prints mean class AP of `fused_cauchy` (before) and `fused_adjusted` (the default now) per class, and how many ordinary
objects with neighbours sit in each one's top 5 %.

    python benchmarks/detect_nuisance_quick.py bench/quality_issue30/dev dev seen
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score

from fmb.detect.conditional import MIN_REDSHIFTS, RedshiftConditional, with_redshift
from fmb.detect.density import CrossFitted, Reducer
from fmb.detect.fusion import Calibration
from fmb.detect.methods.ecod import ECODDetector
from fmb.detect.mismatch import PairResidual
from fmb.detect.nuisance import covariate_sources, object_context
from fmb.detect.scores import ADJUSTED_FUSION, CALIBRATED_FUSION, REDSHIFT_CHANNEL, top_fraction
from fmb.detect.tasks import ModelDetectors, score_objects
from fmb.embed.store import load_embeddings_and_residuals

sys.path.insert(0, str(Path(__file__).parent))
from detect_quality import SEEN, UNSEEN  # noqa: E402  (the halves fixed before any work)


def main(project: Path, name: str, half: str) -> None:
    embeddings = project / "runs" / name / "embeddings" / "pixels"
    ids, matrices, residuals = load_embeddings_and_residuals(embeddings)
    every = np.ones(len(ids), dtype=bool)
    fitted = ModelDetectors({}, {}, {}, {}, ["ecod"], "ensemble", Calibration(0.05), False)
    reduced = {}
    for modality, matrix in matrices.items():
        fitted.reducers[modality] = Reducer(32).fit(matrix)
        reduced[modality] = fitted.reducers[modality].transform(matrix)
        fitted.detectors[(modality, "ecod")] = CrossFitted(ECODDetector, 5, 0).fit(reduced[modality], ids)
    pair = np.hstack([reduced["image"], reduced["spectrum"]])
    fitted.mismatch["mismatch"] = CrossFitted(partial(PairResidual, reduced["image"].shape[1]), 5, 0).fit(pair, ids)
    fitted.context = object_context(project / "data" / name / "catalog.parquet", covariate_sources([embeddings]))
    z = fitted.context.redshift(ids)
    has_z = np.isfinite(z)
    fitted.conditional = {m: CrossFitted(RedshiftConditional, 5, 0).fit(with_redshift(z[has_z], x[has_z]), ids[has_z])
                          for m, x in reduced.items()} if has_z.sum() >= MIN_REDSHIFTS else {}
    frame = score_objects(fitted, ids, matrices, residuals, every)
    truth = pd.read_parquet(project / "data" / name / "truth.parquet", columns=["object_id", "anomaly_class"])
    frame = frame.merge(truth, on="object_id")
    crowded = fitted.context.covariate_matrix(frame.object_id.to_numpy())[:, 0] > 0
    print(f"{name}: {len(frame)} objects, covariates {fitted.context.covariates}, {crowded.mean():.0%} with neighbours")
    columns = [CALIBRATED_FUSION, ADJUSTED_FUSION, REDSHIFT_CHANNEL]
    rows = {}
    for cls in SEEN if half == "seen" else UNSEEN:
        keep = frame.anomaly_class.isin([cls, "none"]).to_numpy()
        labels = (frame.anomaly_class[keep] == cls).to_numpy()
        rows[cls] = {c: average_precision_score(labels, np.nan_to_num(frame[c].to_numpy()[keep], nan=-1.0))
                     for c in columns}
        rows[cls]["chance"] = labels.mean()
    table = pd.DataFrame(rows).T
    print(table.round(3).to_string())
    print("mean class AP:", table[columns].mean().round(3).to_dict())
    ordinary = (frame.anomaly_class == "none").to_numpy()
    for column in columns[:2]:
        top = top_fraction(frame[column].to_numpy(), 0.05)
        print(f"{column}: top 5 % holds {(ordinary & crowded)[top].mean():.0%} ordinary objects with neighbours "
              f"(they are {(ordinary & crowded).mean():.0%} of all)")


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2], sys.argv[3])

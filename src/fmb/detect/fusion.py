"""Rank fusion within the common object set.

Percentiles p = (N - rank + 1) / N (1 = most anomalous) are computed on the objects present in
every input, so every p means the same thing. Inputs: image, spectrum and joint density scores (the
joint embedding is an input of its own, never folded into "image") and the misalignment score.

* fused_geo  = p_mis * sqrt(p_img * p_spec)      odd in both modalities and mismatched
* fused_min  = p_mis * min(p_img, p_spec)
* fused_avg  = p_mis * (p_img + p_spec) / 2
* fused_all  = (p_img * p_spec * p_joint * p_mis) ** (1/4)   consensus of all four inputs
* fused_max  = max(p_img, p_spec, p_joint, p_mis)             odd in any one way
* uplift     = percentile of fused_geo - max(p_img, p_spec): positive when fusion ranks an object
               higher than either modality alone does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmb.detect.scores import percentile, rank_descending

INPUTS = {"img": "image", "spec": "spectrum", "joint": "joint"}
MISMATCH_COLUMNS = ("mismatch", "mismatch_residual", "mismatch_cosine")  # "mismatch" is the one fused


def fuse(scores: pd.DataFrame, method: str) -> pd.DataFrame:
    """Add pct_*/rank_* for every score column and the fused scores, on the common set."""
    columns = [c for c in scores.columns if c.startswith("score_") or c in MISMATCH_COLUMNS]
    needed = [f"score_{m}_{method}" for m in INPUTS.values()] + ["mismatch"]
    missing = [c for c in needed if c not in scores.columns]
    if missing:
        raise ValueError(f"fusion needs {missing}")
    common = scores[columns].notna().all(axis=1).to_numpy() & np.isfinite(scores[columns].to_numpy()).all(axis=1)
    out = scores.copy()
    for column in columns:
        name = column.removeprefix("score_")
        out[f"pct_{name}"] = np.nan
        out[f"rank_{name}"] = pd.array([pd.NA] * len(out), dtype="Int64")
        out.loc[common, f"pct_{name}"] = percentile(out.loc[common, column].to_numpy())
        out.loc[common, f"rank_{name}"] = rank_descending(out.loc[common, column].to_numpy())
    p = {short: out.loc[common, f"pct_{modality}_{method}"].to_numpy() for short, modality in INPUTS.items()}
    p_mis = out.loc[common, "pct_mismatch"].to_numpy()
    fused = {
        "fused_geo": p_mis * np.sqrt(p["img"] * p["spec"]),
        "fused_min": p_mis * np.minimum(p["img"], p["spec"]),
        "fused_avg": p_mis * (p["img"] + p["spec"]) / 2,
        "fused_all": (p["img"] * p["spec"] * p["joint"] * p_mis) ** 0.25,
        "fused_max": np.maximum.reduce([p["img"], p["spec"], p["joint"], p_mis]),
    }
    for name, values in fused.items():
        out[name] = np.nan
        out.loc[common, name] = values
    out["uplift"] = np.nan
    out.loc[common, "uplift"] = percentile(fused["fused_geo"]) - np.maximum(p["img"], p["spec"])
    out["in_common_set"] = common
    return out

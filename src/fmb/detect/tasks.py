"""`fmb detect`: scores/<model>.parquet per model (design §3), detectors saved beside it.

Never reads a truth table: only embeddings go in.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fmb.config import ResolvedConfig
from fmb.detect.density import CrossFitted, Reducer, load, robust_z, save
from fmb.detect.fusion import fuse
from fmb.detect.mismatch import ContrastiveMismatch, PairResidual, cosine_mismatch
from fmb.embed.store import embedded_models, embedding_manifests, load_embeddings
from fmb.errors import FmbError
from fmb.io import write_json, write_table
from fmb.plugins import detector_class, encoder_class
from fmb.stage import Stage


@dataclass
class ModelDetectors:
    """Everything needed to score new objects of one model later."""

    reducers: dict
    detectors: dict  # (modality, method) -> CrossFitted
    mismatch: dict  # score column ("mismatch", "mismatch_residual") -> CrossFitted; empty without both modalities
    method_for_fusion: str


def detect(config: ResolvedConfig, log=print) -> dict:
    models = config.detect.models or embedded_models(config)
    if not models:
        raise FmbError("no embeddings to score; run `fmb embed MODEL` first")
    summary = {}
    for model in models:
        ids, matrices = load_embeddings(config.layout.embeddings(model).dir)
        log(f"{model}: scoring {len(ids)} objects ({', '.join(matrices)})")
        frame, fitted, extra = _score_model(config, model, ids, matrices)
        files = config.layout.scores
        save(fitted, files.detectors(model))
        write_table(pa.Table.from_pandas(frame, preserve_index=False), files.table(model))
        summary[model] = {"objects": len(ids), "common_set": int(frame["in_common_set"].sum()), **extra}
    write_json(summary, config.layout.scores.summary)
    return summary


def _score_model(config: ResolvedConfig, model: str, ids: np.ndarray, matrices: dict) -> tuple[pd.DataFrame, ModelDetectors, dict]:
    settings = config.detect
    rng = np.random.default_rng(config.seed)
    fit = np.sort(rng.choice(len(ids), min(settings.max_fit, len(ids)), replace=False))
    frame = pd.DataFrame({"object_id": ids})
    reducers, detectors, reduced = {}, {}, {}
    for modality, matrix in matrices.items():
        reducers[modality] = Reducer(settings.pca_components, seed=config.seed).fit(matrix[fit])
        reduced[modality] = reducers[modality].transform(matrix)
        for method in settings.methods:
            crossfit = CrossFitted(_factory(method, config), settings.folds, config.seed).fit(reduced[modality][fit], ids[fit])
            detectors[(modality, method)] = crossfit
            frame[f"score_{modality}_{method}"] = crossfit.score(reduced[modality], ids)
            frame[f"z_{modality}_{method}"] = robust_z(frame[f"score_{modality}_{method}"].to_numpy())
    mismatch = {}
    extra = {}
    if {"image", "spectrum"} <= set(matrices):
        pair = np.hstack([reduced["image"], reduced["spectrum"]])
        for column, make in _mismatch_factories(config, reduced["image"].shape[1]).items():
            mismatch[column] = CrossFitted(make, settings.folds, config.seed).fit(pair[fit], ids[fit])
            frame[column] = mismatch[column].score(pair, ids)
        if encoder_class(model).aligned:  # image and spectrum spaces aligned by training: the cosine means something
            frame["mismatch_cosine"] = cosine_mismatch(matrices["image"], matrices["spectrum"])
            extra["spearman_learned_vs_cosine_mismatch"] = float(
                frame["mismatch"].rank().corr(frame["mismatch_cosine"].rank()))
    frame = fuse(frame, settings.fusion_method) if mismatch and "joint" in matrices else frame
    return frame, ModelDetectors(reducers, detectors, mismatch, settings.fusion_method), extra


def _factory(method: str, config: ResolvedConfig):
    """detector(seed=...) makers from the registry and `detect.<method>`; partials (not lambdas) so
    that saved detectors can be unpickled."""
    return partial(detector_class(method), **getattr(config.detect, method).model_dump())


def _mismatch_factories(config: ResolvedConfig, n_image: int) -> dict:
    return {"mismatch": partial(ContrastiveMismatch, n_image, **config.detect.mismatch.model_dump()),
            "mismatch_residual": partial(PairResidual, n_image)}


def score_new(config: ResolvedConfig, model: str, embeddings: Path, out: Path) -> Path:
    """Score objects of another embedding directory with this run's saved detectors (no refitting)."""
    path = config.layout.scores.detectors(model)
    if not path.is_file():
        raise FmbError(f"no saved detectors at {path}; run `fmb detect` first")
    fitted: ModelDetectors = load(path)
    ids, matrices = load_embeddings(embeddings)
    frame = pd.DataFrame({"object_id": ids})
    reduced = {m: fitted.reducers[m].transform(x) for m, x in matrices.items() if m in fitted.reducers}
    for (modality, method), crossfit in fitted.detectors.items():
        if modality in reduced:
            frame[f"score_{modality}_{method}"] = crossfit.score(reduced[modality], ids)
    if {"image", "spectrum"} <= set(reduced):
        for column, crossfit in fitted.mismatch.items():
            frame[column] = crossfit.score(np.hstack([reduced["image"], reduced["spectrum"]]), ids)
    return write_table(pa.Table.from_pandas(frame, preserve_index=False), out)


#: Stage 3: every embedded model of run.models (or detect.models) scored.
DETECT = Stage("detect", detect, ("detect", "seed", "run.models"), inputs=embedding_manifests,
               outputs=lambda config: [config.layout.scores.dir], after=("embed",))

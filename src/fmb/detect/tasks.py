"""`fmb detect`: scores/<model>.parquet per model (design §3), detectors saved beside it, and the
cross-model consensus ranking (scores/consensus.parquet).

Never reads a truth table: only embeddings go in. Fitting (`_fit`) and scoring (`score_frame`)
are separate, so objects scored later with the saved detectors (`score_new`) go through the same
code as the run's own.
"""

from __future__ import annotations

import time
from collections import defaultdict
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa

from fmb.config import ResolvedConfig
from fmb.detect.calibrate import TailCalibrator, cauchy_combine, significance
from fmb.detect.density import CrossFitted, Reducer, load, robust_z, save
from fmb.detect.fusion import Calibration, calibrate, fuse
from fmb.detect.mismatch import ContrastiveMismatch, PairResidual, cosine_mismatch
from fmb.detect.residual import PCAResidual
from fmb.detect.scores import (CALIBRATED_FUSION, COMMON_SET, CONSENSUS, FIT_SAMPLE, MODALITIES, RESIDUAL, p_column,
                               score_column, z_column)
from fmb.embed.store import embedded_models, embedding_manifests, load_embeddings_and_residuals
from fmb.errors import FmbError
from fmb.io import write_json, write_table
from fmb.plugins import detector_class, encoder_class
from fmb.stage import Stage


@dataclass
class ModelDetectors:
    """Everything needed to score new objects of one model later."""

    reducers: dict  # modality -> Reducer
    detectors: dict  # (modality, method) -> CrossFitted on the reduced embedding
    residuals: dict  # modality -> CrossFitted PCAResidual on the embedding (where the model gives none)
    mismatch: dict  # score column ("mismatch", "mismatch_residual") -> CrossFitted; empty without both modalities
    methods: list  # the methods of the ensembles
    fusion_method: str
    calibration: Calibration
    aligned: bool


def detect(config: ResolvedConfig, log=print) -> dict:
    models = config.detect.models or embedded_models(config)
    if not models:
        raise FmbError("no embeddings to score; run `fmb embed MODEL` first")
    summary, frames = {}, {}
    for model in models:
        ids, matrices, residuals = load_embeddings_and_residuals(config.layout.embeddings(model).dir)
        log(f"{model}: scoring {len(ids)} objects ({', '.join(matrices)})")
        seconds: dict[str, float] = defaultdict(float)
        fit = _fit_sample(config, len(ids))
        fitted = _fit(config, model, ids, matrices, residuals, fit, seconds)
        frame = score_frame(fitted, ids, matrices, residuals, fit, seconds)
        files = config.layout.scores
        save(fitted, files.detectors(model))
        write_table(pa.Table.from_pandas(frame, preserve_index=False), files.table(model))
        frames[model] = frame
        common = frame.get(COMMON_SET, pd.Series([], dtype=bool))
        summary[model] = {"objects": len(ids), "common_set": int(common.sum()),
                          "seconds": {k: round(v, 2) for k, v in seconds.items()}, **_critic_agreement(frame)}
    consensus = consensus_frame(frames, config.detect.tail)
    if consensus is not None:
        write_table(pa.Table.from_pandas(consensus, preserve_index=False), config.layout.scores.consensus)
    write_json(summary, config.layout.scores.summary)
    return summary


def _fit_sample(config: ResolvedConfig, n: int) -> np.ndarray:
    """A boolean mask of the objects the detectors and calibrations are fitted on."""
    rng = np.random.default_rng(config.seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, min(config.detect.max_fit, n), replace=False)] = True
    return mask


def _fit(config: ResolvedConfig, model: str, ids: np.ndarray, matrices: dict, residuals: dict, fit: np.ndarray,
         seconds: dict) -> ModelDetectors:
    settings = config.detect
    fitted = ModelDetectors({}, {}, {}, {}, list(settings.methods), settings.fusion_method,
                            Calibration(settings.tail), encoder_class(model).aligned)
    reduced = {}
    for modality, matrix in matrices.items():
        fitted.reducers[modality] = Reducer(settings.pca_components, seed=config.seed).fit(matrix[fit])
        reduced[modality] = fitted.reducers[modality].transform(matrix[fit])
        for method in settings.methods:
            started = time.perf_counter()
            fitted.detectors[(modality, method)] = _crossfit(config, _factory(method, config), reduced[modality],
                                                             ids[fit])
            seconds[method] += time.perf_counter() - started
        if modality not in residuals and matrix.shape[1] > fitted.reducers[modality].components_.shape[0]:
            started = time.perf_counter()  # a PCA that keeps every dimension leaves no residual
            fitted.residuals[modality] = _crossfit(config, partial(PCAResidual, settings.pca_components),
                                                   matrix[fit], ids[fit])
            seconds[RESIDUAL] += time.perf_counter() - started
    if {"image", "spectrum"} <= set(matrices):
        pair = np.hstack([reduced["image"], reduced["spectrum"]])
        for column, make in _mismatch_factories(config, reduced["image"].shape[1]).items():
            started = time.perf_counter()
            fitted.mismatch[column] = _crossfit(config, make, pair, ids[fit])
            seconds[column] += time.perf_counter() - started
    return fitted


def _crossfit(config: ResolvedConfig, make, x: np.ndarray, ids: np.ndarray) -> CrossFitted:
    return CrossFitted(make, config.detect.folds, config.seed).fit(x, ids)


def score_frame(fitted: ModelDetectors, ids: np.ndarray, matrices: dict, residuals: dict,
                reference: np.ndarray | None, seconds: dict | None = None) -> pd.DataFrame:
    """Every score of the contract (`fmb.detect.scores`) for these objects. `reference` marks the fit
    sample, on which calibrations not fitted yet are fitted (None: all must be fitted already)."""
    seconds = defaultdict(float) if seconds is None else seconds
    frame = pd.DataFrame({"object_id": ids})
    reduced = {m: fitted.reducers[m].transform(x) for m, x in matrices.items() if m in fitted.reducers}
    for (modality, method), crossfit in fitted.detectors.items():
        if modality in reduced:
            started = time.perf_counter()
            frame[score_column(modality, method)] = crossfit.score(reduced[modality], ids)
            frame[z_column(modality, method)] = robust_z(frame[score_column(modality, method)].to_numpy())
            seconds[method] += time.perf_counter() - started
    for modality in MODALITIES:
        if modality in residuals:
            frame[score_column(modality, RESIDUAL)] = residuals[modality]
        elif modality in fitted.residuals and modality in matrices:
            frame[score_column(modality, RESIDUAL)] = fitted.residuals[modality].score(matrices[modality], ids)
    if {"image", "spectrum"} <= set(reduced):
        pair = np.hstack([reduced["image"], reduced["spectrum"]])
        for column, crossfit in fitted.mismatch.items():
            started = time.perf_counter()
            frame[column] = crossfit.score(pair, ids)
            seconds[column] += time.perf_counter() - started
        if fitted.aligned:  # image and spectrum spaces aligned by training: the cosine means something
            frame["mismatch_cosine"] = cosine_mismatch(matrices["image"], matrices["spectrum"])
    started = time.perf_counter()
    frame = calibrate(frame, fitted.calibration, fitted.methods, reference)
    seconds["calibration"] += time.perf_counter() - started
    if reference is not None:
        frame[FIT_SAMPLE] = reference
    if fitted.mismatch and "joint" in reduced:
        frame = fuse(frame, fitted.fusion_method)
    return frame


def _critic_agreement(frame: pd.DataFrame) -> dict:
    if "mismatch_cosine" not in frame:
        return {}
    learned, cosine = frame["mismatch"].rank(), frame["mismatch_cosine"].rank()
    return {"spearman_learned_vs_cosine_mismatch": float(learned.corr(cosine))}


def consensus_frame(frames: dict[str, pd.DataFrame], tail: float) -> pd.DataFrame | None:
    """Every object of any model: the Cauchy combination of the models' calibrated fused tail
    probabilities (those it has), recalibrated on the objects in every model's fit sample."""
    columns = {model: frame[["object_id", CALIBRATED_FUSION, FIT_SAMPLE]]
               for model, frame in frames.items() if CALIBRATED_FUSION in frame}
    if len(columns) < 2:
        return None
    merged = None
    for model, part in columns.items():
        part = part.rename(columns={CALIBRATED_FUSION: f"sig_{model}", FIT_SAMPLE: f"fit_{model}"})
        merged = part if merged is None else merged.merge(part, on="object_id", how="outer")
    merged = merged.sort_values("object_id", kind="stable").reset_index(drop=True)
    # the significance (-log10 p), not p itself, which underflows for the most extreme objects
    log_p = -np.log(10.0) * merged[[f"sig_{m}" for m in columns]].to_numpy(dtype=float)
    statistic = significance(cauchy_combine(log_p))
    reference = merged[[f"fit_{m}" for m in columns]].fillna(False).to_numpy(dtype=bool).all(axis=1)
    log_p_consensus = TailCalibrator(tail).fit(statistic[reference]).log_p_value(statistic)
    return pd.DataFrame({"object_id": merged["object_id"].to_numpy(), CONSENSUS: significance(log_p_consensus),
                         p_column(CONSENSUS): np.exp(log_p_consensus),
                         "n_models": np.isfinite(log_p).sum(axis=1)})


def _factory(method: str, config: ResolvedConfig):
    """detector(seed=...) makers from the registry and `detect.<method>`; partials (not lambdas) so
    that saved detectors can be unpickled."""
    return partial(detector_class(method), **getattr(config.detect, method).model_dump())


def _mismatch_factories(config: ResolvedConfig, n_image: int) -> dict:
    return {"mismatch": partial(ContrastiveMismatch, n_image, **config.detect.mismatch.model_dump()),
            "mismatch_residual": partial(PairResidual, n_image)}


def score_new(config: ResolvedConfig, model: str, embeddings: Path, out: Path) -> Path:
    """Score objects of another embedding directory with this run's saved detectors and calibrations
    (no refitting): the same columns as the run's own score table."""
    path = config.layout.scores.detectors(model)
    if not path.is_file():
        raise FmbError(f"no saved detectors at {path}; run `fmb detect` first")
    fitted: ModelDetectors = load(path)
    ids, matrices, residuals = load_embeddings_and_residuals(embeddings)
    frame = score_frame(fitted, ids, matrices, residuals, reference=None)
    return write_table(pa.Table.from_pandas(frame, preserve_index=False), out)


#: Stage 3: every embedded model of run.models (or detect.models) scored.
DETECT = Stage("detect", detect, ("detect", "seed", "run.models"), inputs=embedding_manifests,
               outputs=lambda config: [config.layout.scores.dir], after=("embed",))

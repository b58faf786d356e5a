"""Turning a model's scores into one ranking: calibrated tail probabilities, ensembles, fusions.

**Calibrated (the default ranking).** Every score gets its tail probability against the
cross-fitted scores of the fit sample (`fmb.detect.calibrate.TailCalibrator`), ``p_<stem>``. They
are combined by the Cauchy rule, which stays valid when its inputs are correlated, in a tree in
which every distinct way of being odd counts once, however many detectors look at it (detectors of
one kind are redundant, and a rule that sums evidence would otherwise reward an object mildly
odd to all of them over one extreme in a single way):

* ``score_<modality>_ensemble``: the modality's density detectors (`detect.methods`), each strong
  where others are weak;
* ``score_<modality>_combined``: that ensemble, the modality's reconstruction residual (on the
  manifold of ordinary objects and off it) and, for an object with a redshift, its score for that
  redshift (`fmb.detect.conditional`: a colour or a line ordinary at one redshift and impossible
  at another): every way the modality is odd;
* ``fused_cauchy``: the image's and the spectrum's combined scores and the misalignment: an object
  odd in any one way (image, spectrum, the pairing) rises. The joint embedding's combined score
  joins only where one of those is missing (`fmb.detect.scores.calibrated_inputs`): its density
  sees each of those ways again.

Every combination is recalibrated against the fit sample, so each p_ column is the share of
ordinary objects at least that odd, and -log10 of it is the score.

**Percentile fusions (the original's).** Percentiles p = (N - rank + 1) / N (1 = most anomalous)
on the objects present in every input, of each modality's `method` score and the misalignment:

* fused_geo  = p_mis * sqrt(p_img * p_spec)      odd in both modalities and mismatched
* fused_min  = p_mis * min(p_img, p_spec)
* fused_avg  = p_mis * (p_img + p_spec) / 2
* fused_all  = (p_img * p_spec * p_joint * p_mis) ** (1/4)   consensus of all four inputs
* fused_max  = max(p_img, p_spec, p_joint, p_mis)             odd in any one way (by percentile)
* uplift     = percentile of fused_geo - max(p_img, p_spec): positive when fusion ranks an object
               higher than either modality alone does.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmb.detect.calibrate import TailCalibrator, cauchy_combine, significance
from fmb.detect.density import robust_location_scale
from fmb.detect.nuisance import NuisanceCalibrator
from fmb.detect.scores import (ADJUSTED_FUSION, CALIBRATED_FUSION, COMBINED, COMMON_SET, ENSEMBLE, MISMATCH,
                               MODALITIES, REDSHIFT, REDSHIFT_CHANNEL, RESIDUAL, UPLIFT, calibrated_inputs,
                               fusion_inputs, p_column, pct_column, percentile_of_rank, rank_column, rank_descending,
                               ranked_columns, score_column)

INPUTS = {"img": "image", "spec": "spectrum", "joint": "joint"}


class Calibration:
    """The tail calibrators and robust-z references of one model's score columns, fitted on first
    use on the `reference` rows (the fit sample) and reused as they are for every object scored
    later: an object's calibrated scores never depend on which others are scored with it (a shard,
    a batch of new objects)."""

    def __init__(self, tail: float):
        self.tail = tail
        self.calibrators: dict[str, TailCalibrator] = {}
        self.z_references: dict[str, tuple[float, float]] = {}

    def z(self, column: str, values: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        """Robust sigmas above the fit sample's median: (score - median) / (1.4826 MAD)."""
        if column not in self.z_references:
            if reference is None:
                raise ValueError(f"no robust-z reference of {column} was fitted")
            self.z_references[column] = robust_location_scale(values[reference])
        median, scale = self.z_references[column]
        return (values - median) / scale

    def log_p(self, column: str, values: np.ndarray, reference: np.ndarray | None) -> np.ndarray:
        if column not in self.calibrators:
            if reference is None:
                raise ValueError(f"no calibration of {column} was fitted")
            self.calibrators[column] = TailCalibrator(self.tail).fit(values[reference])
        return self.calibrators[column].log_p_value(values)

    def nuisance_log_p(self, column: str, values: np.ndarray, covariates: np.ndarray,
                       reference: np.ndarray | None) -> np.ndarray:
        """log tail probability of each value among the fit sample's objects in its nuisance bin
        (`fmb.detect.nuisance.NuisanceCalibrator`)."""
        calibrators = self.__dict__.setdefault("nuisance", {})  # absent from calibrations saved before it
        if column not in calibrators:
            if reference is None:
                raise ValueError(f"no nuisance calibration of {column} was fitted")
            calibrators[column] = NuisanceCalibrator(self.tail).fit(values[reference], covariates[reference])
        return calibrators[column].log_p_value(values, covariates)


def calibrate(frame: pd.DataFrame, calibration: Calibration, methods, reference: np.ndarray | None) -> pd.DataFrame:
    """Add p_* for every detector, misalignment and redshift-conditional score, each modality's
    ensemble and combined scores, ``score_redshift`` and fused_cauchy.

    A modality's combined score holds every way that modality is odd: its density ensemble, its
    residual (on the manifold of ordinary objects and off it) and, where the object has a redshift,
    its score for that redshift (`fmb.detect.conditional`). Odd for its redshift is not a way of
    being odd of its own but the image's or the spectrum's, judged in context, so it joins their
    channels rather than taking a share of the fusion beside them. ``score_redshift``, the three
    redshift scores combined, is kept for reading (NaN without a redshift) and fused nowhere."""
    log_p = {}
    redshift = _redshift_columns(frame.columns)
    for column in ranked_columns(frame.columns) + redshift:
        log_p[column] = calibration.log_p(column, frame[column].to_numpy(dtype=float), reference)
        frame[p_column(column)] = np.exp(log_p[column])
    for modality in MODALITIES:
        _combine_into(frame, score_column(modality, ENSEMBLE), [score_column(modality, m) for m in methods],
                      log_p, calibration, reference)
        _combine_into(frame, score_column(modality, COMBINED),
                      [score_column(modality, ENSEMBLE), score_column(modality, RESIDUAL),
                       score_column(modality, REDSHIFT)], log_p, calibration, reference)
    _combine_into(frame, REDSHIFT_CHANNEL, redshift, log_p, calibration, reference)
    _combine_into(frame, CALIBRATED_FUSION, calibrated_inputs(log_p), log_p, calibration, reference)
    return frame


def _redshift_columns(columns) -> list[str]:
    return [score_column(modality, REDSHIFT) for modality in MODALITIES if score_column(modality, REDSHIFT) in columns]


def adjust(frame: pd.DataFrame, calibration: Calibration, covariates: np.ndarray,
           reference: np.ndarray | None) -> pd.DataFrame:
    """Add the default ranking to a calibrated frame (`calibrate`): ``fused_adjusted``, every
    channel of ``fused_cauchy`` calibrated within its nuisance bin (`covariates`, objects x
    covariates), Cauchy-combined and calibrated within the nuisance bins again: a channel lifts an
    object only by evidence beyond what ordinary objects observed the same way show, and the top of
    the list holds each way of being observed in proportion to its share, unless its objects are
    odd beyond it."""
    members = [calibration.nuisance_log_p(column, significance(_channel_log_p(frame, column, calibration)),
                                          covariates, reference) for column in calibrated_inputs(frame.columns)]
    if members:
        statistic = significance(cauchy_combine(np.column_stack(members)))
        adjusted = calibration.nuisance_log_p(ADJUSTED_FUSION, statistic, covariates, reference)
        frame[ADJUSTED_FUSION] = significance(adjusted)
        frame[p_column(ADJUSTED_FUSION)] = np.exp(adjusted)
    return frame


def _channel_log_p(frame: pd.DataFrame, column: str, calibration: Calibration) -> np.ndarray:
    """A fusion channel's calibrated log p: a combination's column is -log10 of it, a detector's
    score goes through its calibrator."""
    if column.endswith(f"_{COMBINED}"):
        return -frame[column].to_numpy(dtype=float) * np.log(10.0)
    return calibration.log_p(column, frame[column].to_numpy(dtype=float), None)


def _combine_into(frame: pd.DataFrame, column: str, members: list[str], log_p: dict, calibration: Calibration,
                  reference: np.ndarray | None) -> None:
    """`column` (-log10 p) and its p_ from the Cauchy combination of the `members` present, recalibrated."""
    present = [log_p[c] for c in members if c in log_p]
    if present:
        log_p[column] = _combined(frame, column, present, calibration, reference)


def _combined(frame: pd.DataFrame, column: str, members: list[np.ndarray], calibration: Calibration,
              reference: np.ndarray | None) -> np.ndarray:
    """Cauchy-combine `members` (log p), recalibrate, write `column` (-log10 p) and its p_; the log p."""
    statistic = significance(cauchy_combine(np.column_stack(members)))
    log_p = calibration.log_p(column, statistic, reference)
    frame[column] = significance(log_p)
    frame[p_column(column)] = np.exp(log_p)
    return log_p


def fuse(scores: pd.DataFrame, method: str) -> pd.DataFrame:
    """Add pct_*/rank_* for every score column and the percentile fusions, on the common set, to a
    table in memory (new objects scored with saved detectors). The run's merge feeds the same
    formulas with ranks taken out of core (`fmb.detect.population.population_parts`)."""
    columns = ranked_columns(scores.columns)
    check_fusion_inputs(columns, method)
    common = common_set(scores[columns].to_numpy(dtype=float))
    ranks = {column: _ranks_on(scores[column].to_numpy(dtype=float), common) for column in columns}
    added = fusion_columns(ranks, int(common.sum()), method)
    added[UPLIFT] = uplift(added, _ranks_on(added["fused_geo"], common), int(common.sum()), method)
    added[COMMON_SET] = common
    ranked = {rank_column(column) for column in columns}
    frame = pd.DataFrame({name: _nullable_integers(values) if name in ranked else values
                          for name, values in added.items()}, index=scores.index)
    return pd.concat([scores, frame], axis=1)


def check_fusion_inputs(columns: list[str], method: str) -> None:
    missing = [c for c in fusion_inputs(method) if c not in columns]
    if missing:
        raise ValueError(f"fusion needs {missing}")


def common_set(values: np.ndarray) -> np.ndarray:
    """The rows whose every ranked score is finite: the objects the percentiles are taken among."""
    return np.isfinite(values).all(axis=1)


def _ranks_on(values: np.ndarray, common: np.ndarray) -> np.ndarray:
    ranks = np.full(len(values), np.nan)
    ranks[common] = rank_descending(values[common])
    return ranks


def _nullable_integers(values: np.ndarray) -> pd.arrays.IntegerArray:
    """A rank column (float, NaN outside the common set) as nullable integers."""
    missing = np.isnan(values)
    return pd.arrays.IntegerArray(np.where(missing, 0, values).astype(np.int64), missing)


def fusion_columns(ranks: dict[str, np.ndarray], n: int, method: str) -> dict[str, np.ndarray]:
    """From every score column's rank among the `n` objects of the common set (NaN outside it, the
    ranking rule of `fmb.detect.scores`): its pct_ and rank_, then the percentile fusions (NaN
    outside the common set). Row by row, so that it can run on any slice of the objects."""
    out: dict[str, np.ndarray] = {}
    for column, rank in ranks.items():
        out[pct_column(column)] = percentile_of_rank(rank, n)
        out[rank_column(column)] = rank
    p = {short: out[pct_column(score_column(modality, method))] for short, modality in INPUTS.items()}
    p_mis = out[pct_column(MISMATCH)]
    out["fused_geo"] = p_mis * np.sqrt(p["img"] * p["spec"])
    out["fused_min"] = p_mis * np.minimum(p["img"], p["spec"])
    out["fused_avg"] = p_mis * (p["img"] + p["spec"]) / 2
    out["fused_all"] = (p["img"] * p["spec"] * p["joint"] * p_mis) ** 0.25
    out["fused_max"] = np.maximum.reduce([p["img"], p["spec"], p["joint"], p_mis])
    return out


def uplift(columns: dict[str, np.ndarray], geo_rank: np.ndarray, n: int, method: str) -> np.ndarray:
    """Percentile of fused_geo (from its rank among the common set) minus max(p_img, p_spec)."""
    return percentile_of_rank(geo_rank, n) - np.maximum(columns[pct_column(score_column("image", method))],
                                                        columns[pct_column(score_column("spectrum", method))])

"""Calibrated tail probabilities of scores, and a combination rule that holds under dependence.

Every detector score fmb computes is cross-fitted (`fmb.detect.density.CrossFitted`): an object of
the fit sample is scored by a detector that never saw it. The fit sample's scores are therefore
draws from the distribution of an ordinary object's score, and the share of them at or above an
object's score is that score's tail probability (a conformal p-value). Scores of different
methods, modalities and models, in different units, all become one quantity: how rare an ordinary
object this odd would be.

* `TailCalibrator`: the empirical tail probability, interpolated between reference scores so that
  it is strictly monotone (no ties between objects the reference does not separate). Beyond the
  reference's upper `tail` quantile u the tail is an exponential fitted to the exceedances (peaks
  over threshold with a generalised Pareto shape of 0): p(s) = p(u) exp(-(s - u) / beta), beta the
  mean excess. Objects beyond every reference score stay apart instead of sharing p = 1/(n+2).
  The shape is not fitted: the reference holds the survey's anomalies too, and they live in its
  upper tail, so a fitted (heavier) tail would learn them and call them ordinary. One parameter,
  the mean excess, is what a few hundred exceedances pin down.
* `cauchy_combine`: the Cauchy combination (Liu & Xie 2020, "ACAT"):
  T = sum_i w_i tan((1/2 - p_i) pi), p = 1/2 - arctan(T) / pi. Its tail is exactly Cauchy whatever
  the dependence between the inputs, so the combined p stays valid for correlated scores, and it
  is dominated by the smallest p_i: an object extreme in one input rises above objects mildly high
  in all of them. Worked in log p, so that p-values far below 1e-300 are still ordered.
* `significance(log_p) = -log10 p`: the score column of a p-value (higher = more anomalous).
"""

from __future__ import annotations

import numpy as np

_LOG_PI = np.log(np.pi)
_SMALL_P = 1e-12  # below this tan((1/2 - p) pi) = 1 / (pi p) to float precision: use the log form


class TailCalibrator:
    """Tail probability P(ordinary score >= s) from a reference sample of cross-fitted scores."""

    def __init__(self, tail: float = 0.05):
        self.tail = tail

    def fit(self, reference: np.ndarray) -> "TailCalibrator":
        reference = np.asarray(reference, dtype=np.float64)
        reference = np.sort(reference[np.isfinite(reference)])
        if len(reference) < 2:
            raise ValueError("a tail calibration needs at least two finite reference scores")
        self.reference_ = reference
        self.threshold_ = float(np.quantile(reference, 1.0 - self.tail))
        excess = reference[reference > self.threshold_] - self.threshold_
        self.mean_excess_ = float(max(excess.mean() if len(excess) else 0.0, 1e-12 * max(1.0, abs(self.threshold_))))
        self.log_p_threshold_ = float(self._log_p_body(np.array([self.threshold_]))[0])
        return self

    def _log_p_body(self, scores: np.ndarray) -> np.ndarray:
        """log of (n - position + 1) / (n + 2), position interpolated among the sorted references:
        below the smallest reference (n + 1) / (n + 2), above the largest 1 / (n + 2)."""
        n = len(self.reference_)
        position = np.interp(scores, self.reference_, np.arange(n, dtype=np.float64), left=-1.0, right=n - 1.0)
        return np.log((n - position) / (n + 2.0))

    def log_p_value(self, scores: np.ndarray) -> np.ndarray:
        """log tail probability of each score; NaN where the score is not finite."""
        scores = np.asarray(scores, dtype=np.float64)
        out = np.full(len(scores), np.nan)
        finite = np.isfinite(scores)
        s = scores[finite]
        tail = s > self.threshold_
        values = self._log_p_body(s)
        values[tail] = self.log_p_threshold_ - (s[tail] - self.threshold_) / self.mean_excess_
        out[finite] = values
        return out

    def p_value(self, scores: np.ndarray) -> np.ndarray:
        return np.exp(self.log_p_value(scores))


def cauchy_combine(log_p: np.ndarray) -> np.ndarray:
    """Combined log p of each row of `log_p` (objects x inputs) by the Cauchy rule, the inputs of a
    row weighted equally; a NaN input is absent (the row combines the others), a row with none NaN."""
    log_p = np.atleast_2d(np.asarray(log_p, dtype=np.float64))
    present = np.isfinite(log_p)
    count = present.sum(axis=1)
    out = np.full(len(log_p), np.nan)
    rows = count > 0
    lp, w = log_p[rows], present[rows] / count[rows, None]
    small = present[rows] & (lp < np.log(_SMALL_P))
    plain_p = np.exp(np.where(present[rows] & ~small, lp, np.log(0.5)))  # absent or small: tan(0) = 0 here
    moderate = (w * np.tan((0.5 - plain_p) * np.pi)).sum(axis=1)
    with np.errstate(divide="ignore"):
        big_terms = np.where(small, np.log(w) - lp - _LOG_PI, -np.inf)  # log of w_i / (pi p_i)
    has_big = small.any(axis=1)
    combined = np.empty(len(lp))
    # T moderate: p = arctan2(1, T) / pi (= 1/2 - arctan(T) / pi), accurate for either sign of T
    combined[~has_big] = np.log(np.arctan2(1.0, moderate[~has_big]) / np.pi)
    # T huge (some p_i < 1e-12): p = 1 / (pi T), log T = L + log1p(rest / e^L), L the log of the big terms
    big = np.logaddexp.reduce(big_terms[has_big], axis=1)
    combined[has_big] = -_LOG_PI - (big + np.log1p(moderate[has_big] * np.exp(-big)))
    out[rows] = combined
    return out


def significance(log_p: np.ndarray) -> np.ndarray:
    """-log10 p: the score a p-value ranks by (higher = more anomalous)."""
    return -np.asarray(log_p, dtype=np.float64) / np.log(10.0)

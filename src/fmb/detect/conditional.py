"""Odd for its redshift: a score of a representation given the object's redshift.

A colour, a magnitude, a continuum slope or a line that is ordinary at one redshift can be
impossible at another, and an unconditional density detector sees only that it is ordinary
somewhere. `RedshiftConditional` models the representation given z as a Gaussian whose mean and
per-dimension spread move smoothly with z (a regression on piecewise-linear functions of
log(1 + z) at quantile knots, ridge-damped), and scores the squared Mahalanobis distance of the
z-standardised residual (covariance shrunk by Ledoit-Wolf), per dimension: large when the object
is far from what objects *at its redshift* look like.

It is a `fmb.detect.base.Detector` over rows ``[z, features...]`` (`with_redshift`), so that it is
cross-fitted like every detector (`fmb.detect.density.CrossFitted`). Objects without a finite
redshift get NaN (they skip the channel; the combinations treat NaN as absent). Only numpy arrays
are kept, so saved detectors load without any further allowed class.
"""

from __future__ import annotations

import numpy as np
from sklearn.covariance import ledoit_wolf

REDSHIFT_COLUMN = "Z"  # the catalog's redshift (`fmb.data.catalog`)
#: Objects with a redshift below which no redshift-conditional score is fitted (each of the k folds
#: fits a mean and a spread at the knots and a covariance of the reduced embedding)
MIN_REDSHIFTS = 200
_RIDGE = 1e-3  # damping of the regressions, relative to the basis' mean diagonal
_LOG_CHI2_1 = -1.2704  # E[log chi^2_1]: log r^2 is biased low by this against log sigma^2


def with_redshift(z: np.ndarray, features: np.ndarray) -> np.ndarray:
    """The detector's input rows: the redshift, then the features."""
    return np.column_stack([np.asarray(z, dtype=np.float64), np.asarray(features, dtype=np.float64)])


class RedshiftConditional:
    """Gaussian of the features given z (mean and spread smooth in z); the score is its squared
    Mahalanobis distance per dimension (higher = more anomalous for its redshift)."""

    name = "redshift"

    def __init__(self, knots: int = 8, seed: int = 0):
        self.knots, self.seed = knots, seed

    def fit(self, x: np.ndarray) -> "RedshiftConditional":
        t, y = self._split(x)
        keep = np.isfinite(t)
        t, y = t[keep], y[keep]
        if len(t) < 2 * self.knots:
            raise ValueError(f"a redshift-conditional model needs at least {2 * self.knots} objects with a redshift")
        self.knots_ = np.unique(np.quantile(t, np.linspace(0.0, 1.0, self.knots)))
        basis = self._basis(t)
        self.mean_coef_ = ridge(basis, y)
        residual = y - basis @ self.mean_coef_
        self.log_var_coef_ = ridge(basis, np.log(residual ** 2 + 1e-12) - _LOG_CHI2_1)
        standardised = residual / self._spread(basis)
        covariance, _ = ledoit_wolf(standardised)
        self.precision_ = np.linalg.inv(covariance)
        return self

    def score(self, x: np.ndarray) -> np.ndarray:
        t, y = self._split(x)
        out = np.full(len(t), np.nan)
        finite = np.isfinite(t)
        if finite.any():
            basis = self._basis(t[finite])
            u = (y[finite] - basis @ self.mean_coef_) / self._spread(basis)
            out[finite] = np.einsum("ij,jk,ik->i", u, self.precision_, u) / u.shape[1]
        return out

    @staticmethod
    def _split(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.asarray(x, dtype=np.float64)
        z = x[:, 0]
        with np.errstate(invalid="ignore"):
            t = np.where(z > -1.0, np.log1p(np.where(z > -1.0, z, 0.0)), np.nan)
        return t, x[:, 1:]

    def _basis(self, t: np.ndarray) -> np.ndarray:
        return hat_basis(t, self.knots_)

    def _spread(self, basis: np.ndarray) -> np.ndarray:
        return np.exp(0.5 * np.clip(basis @ self.log_var_coef_, -50.0, 50.0))


def hat_basis(t: np.ndarray, knots: np.ndarray) -> np.ndarray:
    """Hat functions at the knots: a piecewise-linear function of t, constant beyond the outermost knots."""
    if len(knots) == 1:
        return np.ones((len(t), 1))
    return np.column_stack([np.interp(t, knots, row) for row in np.eye(len(knots))])


def ridge(basis: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Ridge coefficients of every column of `y` on `basis` (one solve)."""
    gram = basis.T @ basis
    gram[np.diag_indices_from(gram)] += _RIDGE * max(float(np.mean(np.diag(gram))), 1e-12)
    return np.linalg.solve(gram, basis.T @ y)

"""Nuisance covariates and calibration within them: an object is odd only against ordinary objects
observed the same way.

A nuisance covariate says how an object was observed, not what it is: its crowding (neighbour
count, the brightest neighbour's flux ratio and distance, blend and edge flags, which the pixel
reference measures while deblending), its S/N, the size of its cutout's usable area. On a real
sky a score's tail is full of ordinary objects with a bright neighbour or a star in the cutout.
`NuisanceCalibrator` gives a score's tail probability *among reference objects observed alike*,
in two steps, both fitted on the fit sample's cross-fitted scores:

1. the score's typical level as a function of the covariates is removed: an additive regression,
   each covariate through a piecewise-linear function (knots at its quantiles up to the 95th, then
   a straight line, so that the brightest neighbour is extrapolated to, not memorised);
2. the residual is calibrated within bins of the covariates (Mondrian conformal calibration): the
   leaves of a regression tree of the residuals' percentile on the covariates, each holding at
   least `min_leaf_share` of the reference (far more than any anomaly class, so that no class can
   make a bin of its own), each with its own tail (`fmb.detect.calibrate.TailCalibrator`).
An ordinary object with a bright neighbour is then as rare as ordinary objects with bright
neighbours are, not as rare as a bright neighbour is among isolated galaxies.

`ObjectContext` reads, by object id, what detection needs besides the embeddings: the catalog's
redshift and the covariate columns (``covariate_<name>``) stored beside any model's embeddings or
in any Parquet table with an ``object_id`` column. It records paths, not data; each file is read
once per process.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from sklearn.tree import DecisionTreeRegressor

from fmb.data.catalog import read_catalog
from fmb.detect.calibrate import TailCalibrator
from fmb.detect.conditional import REDSHIFT_COLUMN, hat_basis, ridge
from fmb.detect.scores import percentile
from fmb.embed.store import embedded_models, embedding_parts
from fmb.layout import EmbeddingFiles

COVARIATE_PREFIX = "covariate_"  # the columns of nuisance covariates stored beside a model's embeddings
CROWDING_PREFIX = "crowding_"  # the covariates of the cutout's crowding, among them
_KNOTS = 6  # knots per covariate of the level regression


class NuisanceCalibrator:
    """Tail probability of a score among the reference objects in the same covariate bin."""

    def __init__(self, tail: float = 0.05, min_leaf_share: float = 0.02, max_leaves: int = 16,
                 seed: int = 0):
        self.tail, self.min_leaf_share, self.max_leaves, self.seed = tail, min_leaf_share, max_leaves, seed

    def fit(self, scores: np.ndarray, covariates: np.ndarray) -> "NuisanceCalibrator":
        scores, covariates = np.asarray(scores, dtype=np.float64), _matrix(covariates, len(scores))
        finite = np.isfinite(scores)
        scores, covariates = scores[finite], covariates[finite]
        with np.errstate(all="ignore"):
            fill = np.nanmedian(covariates, axis=0) if len(covariates) else np.zeros(covariates.shape[1])
        self.fill_ = [float(v) if np.isfinite(v) else 0.0 for v in fill]  # a list: an empty array would not load
        covariates = self._filled(covariates)
        self.knots_ = [np.unique(np.quantile(column, np.linspace(0.0, 0.95, _KNOTS))) for column in covariates.T]
        basis = self._basis(covariates)
        self.coef_ = ridge(basis, scores)
        residual = scores - basis @ self.coef_
        min_leaf = max(50, int(np.ceil(self.min_leaf_share * len(scores))))
        self.tree_ = None
        if covariates.shape[1] and len(scores) >= 2 * min_leaf:
            self.tree_ = DecisionTreeRegressor(min_samples_leaf=min_leaf, max_leaf_nodes=self.max_leaves,
                                               random_state=self.seed).fit(covariates, percentile(residual))
        leaves = self._leaves(covariates)
        self.calibrators_ = {int(leaf): TailCalibrator(self.tail).fit(residual[leaves == leaf])
                             for leaf in np.unique(leaves)}
        return self

    def _filled(self, covariates: np.ndarray) -> np.ndarray:
        return np.where(np.isfinite(covariates), covariates, np.asarray(self.fill_, dtype=np.float64))

    def _basis(self, covariates: np.ndarray) -> np.ndarray:
        """A constant, then per covariate hat functions at its knots and a ramp beyond the last."""
        columns = [np.ones((len(covariates), 1))]
        for column, knots in zip(covariates.T, self.knots_):
            if len(knots) > 1:
                columns.append(hat_basis(column, knots)[:, 1:])  # the first hat is the constant's
                columns.append(np.maximum(column - knots[-1], 0.0)[:, None])
        return np.hstack(columns)

    def _leaves(self, covariates: np.ndarray) -> np.ndarray:
        return np.zeros(len(covariates), dtype=np.int64) if self.tree_ is None else self.tree_.apply(covariates)

    def log_p_value(self, scores: np.ndarray, covariates: np.ndarray) -> np.ndarray:
        scores = np.asarray(scores, dtype=np.float64)
        covariates = self._filled(_matrix(covariates, len(scores)))
        residual = scores - self._basis(covariates) @ self.coef_
        leaves = self._leaves(covariates)
        out = np.full(len(scores), np.nan)
        for leaf, calibrator in self.calibrators_.items():
            chosen = leaves == leaf
            out[chosen] = calibrator.log_p_value(residual[chosen])
        return out

    @property
    def bins(self) -> int:
        return len(self.calibrators_)


def _matrix(covariates: np.ndarray | None, n: int) -> np.ndarray:
    return np.zeros((n, 0)) if covariates is None else np.asarray(covariates, dtype=np.float64).reshape(n, -1)


# -- what detection reads by object id besides the embeddings ------------------------------------------
@dataclass
class ObjectContext:
    """Where each object's redshift and nuisance covariates are read from (paths, as strings)."""

    catalog: str | None = None  # a catalog (`fmb.data.catalog`) with a REDSHIFT_COLUMN
    covariate_sources: list = field(default_factory=list)  # embedding directories or Parquet tables
    covariates: list = field(default_factory=list)  # the covariates' names, in the order fitted on

    def redshift(self, ids: np.ndarray) -> np.ndarray:
        """Each object's redshift; NaN where there is no catalog, no row or no finite value."""
        if self.catalog is None:
            return np.full(len(ids), np.nan)
        return _lookup(_redshifts(*_stamp(self.catalog)), ids).to_numpy(dtype=np.float64)

    def covariate_matrix(self, ids: np.ndarray) -> np.ndarray:
        """(objects, covariates) in `covariates` order; NaN where an object has no value."""
        table = covariate_table(self.covariate_sources)
        columns = [table[name] if name in table else pd.Series(dtype=float) for name in self.covariates]
        return np.column_stack([_lookup(column, ids).to_numpy(np.float64) for column in columns]) \
            if columns else np.zeros((len(ids), 0))


def object_context(catalog: Path | None, covariate_sources: list[Path]) -> ObjectContext:
    """The context of a fit: the catalog if it has a redshift, the covariates the sources hold."""
    usable = catalog is not None and Path(catalog).is_file() and REDSHIFT_COLUMN in _catalog(*_stamp(str(catalog)))
    sources = [str(source) for source in covariate_sources]
    return ObjectContext(str(catalog) if usable else None, sources, list(covariate_table(sources).columns))


def covariate_sources(embedding_dirs: list[Path]) -> list[Path]:
    """The embedding directories among these whose parts hold nuisance covariates."""
    return [directory for directory in embedding_dirs if _part_covariates(directory)]


def covariate_table(sources: list[str]) -> pd.DataFrame:
    """Every covariate of the sources by object id (the first source to give a covariate wins)."""
    frames = [_covariates(*_stamp(str(source))) for source in sources]
    table = pd.DataFrame(index=pd.Index([], dtype=np.int64, name="object_id"))
    for frame in frames:
        new = [c for c in frame.columns if c not in table.columns]
        table = table.join(frame[new], how="outer") if new else table
    return table


def run_crowding(config) -> pd.DataFrame:
    """The crowding of each object's cutout as the run's models measured it while deblending
    (``crowding_<name>`` covariates, names of `fmb.models.measure.deblend.COVARIATES`: neighbours,
    the brightest one's flux ratio, the nearest one's distance, blend and edge flags), by object id,
    the prefix dropped; a table without columns when no model stores it."""
    directories = [config.layout.embeddings(model).dir for model in embedded_models(config)]
    table = covariate_table([str(source) for source in covariate_sources(directories)])
    crowding = [name for name in table.columns if name.startswith(CROWDING_PREFIX)]
    return table[crowding].rename(columns=lambda name: name.removeprefix(CROWDING_PREFIX))


def _lookup(column: pd.Series, ids: np.ndarray) -> pd.Series:
    return column.reindex(np.asarray(ids, dtype=np.int64))


def _stamp(path: str) -> tuple[str, float]:
    """(path, its modification time): a changed file is read again."""
    target = Path(path)
    stamp = EmbeddingFiles(target).manifest if target.is_dir() else target
    return path, stamp.stat().st_mtime if stamp.exists() else 0.0


@lru_cache(maxsize=4)
def _catalog(path: str, _mtime: float) -> pd.DataFrame:
    return read_catalog(Path(path))


@lru_cache(maxsize=4)
def _redshifts(path: str, mtime: float) -> pd.Series:
    return pd.to_numeric(_catalog(path, mtime)[REDSHIFT_COLUMN], errors="coerce").astype(float)


def _part_covariates(directory: Path) -> list[str]:
    parts = [part for part in embedding_parts(directory) if part.rows]
    names = pq.read_schema(parts[0].path).names if parts else []
    return [name for name in names if name.startswith(COVARIATE_PREFIX)]


@lru_cache(maxsize=8)
def _covariates(path: str, _mtime: float) -> pd.DataFrame:
    """A source's covariates by object id: an embedding directory's ``covariate_*`` columns, or
    every numeric column of a Parquet table with ``object_id``."""
    source = Path(path)
    if source.is_dir():
        names = _part_covariates(source)
        frame = pd.concat([pd.read_parquet(part.path, columns=["object_id", *names])
                           for part in embedding_parts(source) if part.rows])
        frame.columns = ["object_id", *(name.removeprefix(COVARIATE_PREFIX) for name in names)]
    else:
        frame = pd.read_parquet(source)
        frame = frame[["object_id", *(c for c in frame.columns if c != "object_id"
                                      and pd.api.types.is_numeric_dtype(frame[c]))]]
    return frame.set_index("object_id").astype(np.float64)

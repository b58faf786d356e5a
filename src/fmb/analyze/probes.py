"""`fmb analyze probes`: how much of each physical parameter the embeddings encode, and in how many dimensions.

For every model x modality x target (catalog columns such as Z, LOGM, LOGSFR), k-fold cross-validated:

* decodability: out-of-fold R² of a linear probe (features standardised on the training fold and clipped, Ridge
  with α chosen by leave-one-out CV within the training fold) and of a non-linear probe (LightGBM,
  early-stopped on a split of the training fold); mean and std over folds, and the gap
  R²(LightGBM) - R²(Ridge), the part of the information that is there but not linearly readable;
* dimensionality: exact TreeSHAP contributions φ of the LightGBM probe on held-out objects, normalised
  per object (ψ_ij = φ_ij / Σ_j |φ_ij|), give feature importances a_j = mean_i |ψ_ij| and from them the
  participation ratio PR = (Σa)² / (D Σa²), PR90 (the fraction of features holding 90 % of the
  importance) and the effective number of dimensions EPD = PR · D, with bootstrap errors over objects.

Unlike the original (reference §13.3 item 25: one split, no scaling, fixed α, a baseline on other
objects), every model and an i.i.d. Gaussian random-feature baseline are compared on the same objects
(embedded by every model, finite target) and the same seeded folds, so differences are the models'.
Outputs in `runs/<name>/analysis/probes/`: results.csv, importances.parquet, predictions.parquet,
summary.md, r2.png, pareto.png and scatter_<target>.png.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import lightgbm
import numpy as np
import pandas as pd
import pyarrow as pa
from sklearn.linear_model import RidgeCV
from sklearn.metrics import r2_score
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from fmb.config import ResolvedConfig
from fmb.data.catalog import catalog_path, load_catalog
from fmb.embed.store import embedded_models, embedding_manifests, embedding_parts, part_arrays, read_part, read_rows
from fmb.errors import FmbError
from fmb.io import atomic_path, write_csv, write_table
from fmb.layout import ProbeFiles
from fmb.models.base import MODALITIES
from fmb.viz.style import fmb_style, save_figure
from fmb.stage import Stage

RANDOM_MODEL = "random"  # the random-feature baseline's model name (its modality is "gaussian")
RANDOM_MODALITY = "gaussian"
RIDGE_ALPHAS = np.logspace(-3, 5, 17)
MIN_OBJECTS_PER_FOLD = 10
#: Standardised features are clipped at this many training-fold standard deviations: some embeddings
#: put a few objects 50-90 sigma out, and one such held-out object can wreck a linear probe's fold
#: (measured on a 10k-object run: R² fold std 0.3 -> 0.01), while ordinary tails are untouched.
CLIP_SIGMA = 8.0
IMPORTANCE_LEVEL = 0.9  # PR90: share of features holding this much of the importance
#: Modest fixed LightGBM settings: shallow trees, coarse bins and one thread keep a probe fold well
#: under a second at 10k objects (two threads on shared cores were measured 5-50x slower), while
#: early stopping adapts the number of trees to each target.
LGBM_PARAMS = {
    "objective": "regression", "learning_rate": 0.1, "num_leaves": 7, "min_data_in_leaf": 20,
    "feature_fraction": 0.8, "bagging_fraction": 0.8, "bagging_freq": 1, "lambda_l2": 1.0, "max_bin": 63,
    "num_threads": 1, "deterministic": True, "force_col_wise": True, "verbose": -1,
}
LGBM_MAX_ROUNDS = 500
LGBM_PATIENCE = 20
LGBM_STOPPING_FRACTION = 0.15  # of the training fold, held out for early stopping
# Independent random streams derived from config.seed, one per purpose.
_SAMPLE_STREAM, _FOLD_STREAM, _NOISE_STREAM, _BOOTSTRAP_STREAM = range(4)


# -- dimensionality from SHAP contributions (pure functions) ------------------------------------------
def normalise_contributions(contributions: np.ndarray) -> np.ndarray:
    """ψ_ij = φ_ij / Σ_j |φ_ij| per object; objects whose contributions are all zero carry no
    information about which features matter, so they are dropped."""
    totals = np.abs(contributions).sum(axis=1)
    keep = totals > 0
    return contributions[keep] / totals[keep, None]


def feature_importance(psi: np.ndarray) -> np.ndarray:
    """a_j = mean over objects of |ψ_ij| (NaN when no object has a contribution)."""
    return np.abs(psi).mean(axis=0) if len(psi) else np.full(psi.shape[1], np.nan)


def participation_ratio(importance: np.ndarray) -> float:
    """PR = (Σ a)² / (D Σ a²): 1 when all D features matter equally, 1/D when one feature does."""
    squares = float(np.square(importance).sum())
    return float(importance.sum()) ** 2 / (len(importance) * squares) if squares > 0 else np.nan


def importance_fraction(importance: np.ndarray, level: float = IMPORTANCE_LEVEL) -> float:
    """PR90: the fewest top features whose cumulative importance reaches `level` of the total, over D."""
    total = float(importance.sum())
    if total <= 0:
        return np.nan
    cumulative = np.cumsum(np.sort(importance)[::-1])
    needed = np.searchsorted(cumulative, level * total * (1 - 1e-12)) + 1  # tolerance: sums of floats
    return min(int(needed), len(importance)) / len(importance)


def dimensionality(psi: np.ndarray) -> dict[str, float]:
    """PR, PR90 and EPD = PR · D of normalised contributions (NaN when there are none)."""
    if len(psi) == 0:
        return {"pr": np.nan, "pr90": np.nan, "epd": np.nan}
    importance = feature_importance(psi)
    pr = participation_ratio(importance)
    return {"pr": pr, "pr90": importance_fraction(importance), "epd": pr * psi.shape[1]}


def bootstrap_errors(psi: np.ndarray, resamples: int, rng: np.random.Generator) -> dict[str, float]:
    """Standard deviation of PR, PR90 and EPD over `resamples` bootstrap resamples of the objects."""
    if resamples < 2 or len(psi) < 2:
        return {"pr_err": np.nan, "pr90_err": np.nan, "epd_err": np.nan}
    draws = pd.DataFrame([dimensionality(psi[rng.integers(0, len(psi), len(psi))]) for _ in range(resamples)])
    return {f"{name}_err": float(draws[name].std(ddof=1)) for name in draws.columns}


# -- objects and folds ----------------------------------------------------------------------------------
def sample_objects(object_ids: np.ndarray, max_objects: int, seed: int) -> np.ndarray:
    """At most `max_objects` of the ids, chosen by seed, sorted."""
    ids = np.sort(np.asarray(object_ids, dtype=np.int64))
    if len(ids) <= max_objects:
        return ids
    return np.sort(np.random.default_rng([seed, _SAMPLE_STREAM]).choice(ids, max_objects, replace=False))


def assign_folds(n_objects: int, n_folds: int, seed: int) -> np.ndarray:
    """Fold number per object: a seeded permutation cut into `n_folds` near-equal parts."""
    folds = np.arange(n_objects) % n_folds
    return np.random.default_rng([seed, _FOLD_STREAM]).permutation(folds)


def fold_r2(target: np.ndarray, prediction: np.ndarray, folds: np.ndarray) -> np.ndarray:
    """R² of the out-of-fold predictions, one value per fold."""
    return np.array([r2_score(target[folds == fold], prediction[folds == fold]) for fold in np.unique(folds)])


# -- the probes -------------------------------------------------------------------------------------------
@dataclass
class ProbeFit:
    """Out-of-fold predictions of both probes for one feature matrix and target."""

    pred_ridge: np.ndarray
    alphas: np.ndarray  # chosen per fold
    pred_lgbm: np.ndarray | None
    psi: np.ndarray | None  # normalised SHAP contributions of the explained held-out objects


def cross_validate(features: np.ndarray, target: np.ndarray, folds: np.ndarray, *, with_lightgbm: bool = True,
                   shap_max: int = 2000, seed: int = 0) -> ProbeFit:
    """Fit Ridge (and LightGBM) on each training fold and predict its held-out fold."""
    rng = np.random.default_rng(seed)  # same seed for every model: same inner splits and SHAP rows
    pred_ridge, pred_lgbm = np.empty(len(target)), np.empty(len(target))
    alphas, psi = [], []
    with threadpool_limits(1):  # small matrices: BLAS threads on shared cores cost 4-10x more than they save
        for fold in np.unique(folds):
            train, test = folds != fold, folds == fold
            x_train, x_test = standardise(features[train], features[test])
            ridge = RidgeCV(alphas=RIDGE_ALPHAS, gcv_mode="svd").fit(x_train, target[train])
            pred_ridge[test] = ridge.predict(x_test)
            alphas.append(ridge.alpha_)
            if with_lightgbm:
                booster = fit_lightgbm(x_train, target[train], rng, seed)
                pred_lgbm[test] = booster.predict(x_test)
                psi.append(explain(booster, x_test, shap_max, rng))
    if not with_lightgbm:
        return ProbeFit(pred_ridge, np.array(alphas), None, None)
    return ProbeFit(pred_ridge, np.array(alphas), pred_lgbm, np.concatenate(psi))


def standardise(train: np.ndarray, test: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both sets scaled by the training set's mean and std, then clipped at ±CLIP_SIGMA; held-out
    objects never shape the probe."""
    scaler = StandardScaler().fit(train)
    return (np.clip(scaler.transform(train), -CLIP_SIGMA, CLIP_SIGMA),
            np.clip(scaler.transform(test), -CLIP_SIGMA, CLIP_SIGMA))


def fit_lightgbm(features: np.ndarray, target: np.ndarray, rng: np.random.Generator, seed: int) -> lightgbm.Booster:
    """LightGBM with the number of trees chosen by early stopping on a random part of the training data."""
    stopping = rng.random(len(target)) < LGBM_STOPPING_FRACTION
    return lightgbm.train(
        {**LGBM_PARAMS, "seed": seed},
        lightgbm.Dataset(features[~stopping], target[~stopping]),
        num_boost_round=LGBM_MAX_ROUNDS,
        valid_sets=[lightgbm.Dataset(features[stopping], target[stopping])],
        callbacks=[lightgbm.early_stopping(LGBM_PATIENCE, verbose=False)],
    )


def explain(booster: lightgbm.Booster, features: np.ndarray, limit: int, rng: np.random.Generator) -> np.ndarray:
    """Normalised TreeSHAP contributions ψ of at most `limit` of the objects (chosen at random)."""
    rows = rng.choice(len(features), min(limit, len(features)), replace=False)
    contributions = booster.predict(features[rows], pred_contrib=True)[:, :-1]  # the last column: expected value
    return normalise_contributions(contributions)


def summarise(fit: ProbeFit, target: np.ndarray, folds: np.ndarray, resamples: int, seed: int) -> dict:
    """One results row (without its model / modality / target labels)."""
    ridge = fold_r2(target, fit.pred_ridge, folds)
    row = {"n": len(target), "r2_ridge_mean": ridge.mean(), "r2_ridge_std": ridge.std(ddof=1),
           "alpha": float(np.median(fit.alphas))}
    if fit.pred_lgbm is None:
        return row
    lgbm = fold_r2(target, fit.pred_lgbm, folds)
    rng = np.random.default_rng([seed, _BOOTSTRAP_STREAM])
    return {**row, "r2_lgbm_mean": lgbm.mean(), "r2_lgbm_std": lgbm.std(ddof=1), "gap": lgbm.mean() - ridge.mean(),
            **dimensionality(fit.psi), **bootstrap_errors(fit.psi, resamples, rng)}


# -- inputs -------------------------------------------------------------------------------------------------
@dataclass
class ModelEmbeddings:
    """A model's embeddings as probes need them: which objects are usable (finite in every modality)
    and where they are; the vectors are read for the sampled objects only (`features`)."""

    name: str
    parts: list  # the embedding parts (`fmb.embed.store.Part`), in order
    positions: pd.Series  # usable object id -> row position over the parts
    dims: dict[str, int]  # modality -> embedding width

    @property
    def usable_ids(self) -> pd.Index:
        """Objects whose embedding is finite in every modality."""
        return self.positions.index

    def features(self, object_ids: np.ndarray) -> dict[str, np.ndarray]:
        """{modality: the rows of `object_ids`, in that order}, read part by part."""
        wanted = self.positions.loc[object_ids].to_numpy()
        order = np.argsort(wanted, kind="stable")
        ids, matrices, _ = read_rows(self.parts, wanted[order], tuple(self.dims))
        back = np.empty_like(order)
        back[order] = np.arange(len(order))
        if not np.array_equal(ids[back], object_ids):  # the parts changed since they were indexed here
            raise FmbError(f"the embeddings of {self.name} changed while the probes read them; rerun the probes")
        return {modality: matrix[back] for modality, matrix in matrices.items()}


def load_models(config: ResolvedConfig) -> list[ModelEmbeddings]:
    """Every embedded model's usable objects, found one part at a time: memory holds ids and
    positions, not the vectors, whatever the survey's size."""
    names = embedded_models(config)
    if not names:
        raise FmbError(f"no embeddings for the run's models {config.run.models}; run `fmb embed MODEL` first")
    return [_usable(name, config.layout.embeddings(name).dir) for name in names]


def _usable(name: str, directory: Path) -> ModelEmbeddings:
    parts, ids, positions, dims, offset = embedding_parts(directory), [], [], {}, 0
    for part in parts:
        part_ids, matrices, _ = part_arrays(read_part(part.path, {"object_id", *MODALITIES}))
        finite = np.ones(len(part_ids), dtype=bool)
        for modality, matrix in matrices.items():
            finite &= np.isfinite(matrix).all(axis=1)
            dims[modality] = matrix.shape[1]
        ids.append(part_ids[finite])
        positions.append(offset + np.flatnonzero(finite))
        offset += part.rows
    index = pd.Index(np.concatenate(ids) if ids else np.array([], np.int64), name="object_id")
    if not index.is_unique:
        raise FmbError(f"{directory}: an object id appears more than once; re-run `fmb embed {name}`")
    return ModelEmbeddings(name, parts, pd.Series(np.concatenate(positions) if positions else [], index=index), dims)


def target_values(config: ResolvedConfig, catalog: pd.DataFrame, target: str) -> pd.Series:
    """The target column as floats, NaN where missing; a clear error when the catalog lacks it."""
    if target not in catalog.columns:
        raise FmbError(f"catalog {catalog_path(config)} has no column {target!r} (it has "
                       f"{', '.join(map(str, catalog.columns))}); fix analyze.probes.targets")
    values = pd.to_numeric(catalog[target], errors="coerce").astype(float)
    return values.where(np.isfinite(values))


def probe_objects(values: pd.Series, models: list[ModelEmbeddings], max_objects: int, n_folds: int,
                  seed: int) -> np.ndarray:
    """The objects every model embedded (finite) that have a finite target, sampled to `max_objects`."""
    common = values.dropna().index
    for model in models:
        common = common.intersection(model.usable_ids)
    needed = MIN_OBJECTS_PER_FOLD * n_folds
    if len(common) < needed:
        per_model = ", ".join(f"{m.name} {len(m.usable_ids.intersection(values.dropna().index))}" for m in models)
        raise FmbError(f"too few objects to probe {values.name}: {len(common)} have a finite {values.name} and an "
                       f"embedding from every model ({per_model}); {n_folds} folds need at least {needed}")
    return sample_objects(common.to_numpy(), max_objects, seed)


# -- the task ------------------------------------------------------------------------------------------------
@dataclass
class Probe:
    """One fitted (model, modality, target) with everything the outputs need."""

    model: str
    modality: str
    target: str
    object_ids: np.ndarray
    values: np.ndarray
    folds: np.ndarray
    fit: ProbeFit
    summary: dict


def probes(config: ResolvedConfig, log=print) -> dict:
    """Probe every model x modality x target and write the tables and figures; returns where they are,
    the number of objects per target and the best (model, modality) per target."""
    settings = config.analyze.probes
    catalog = load_catalog(config)
    columns = {target: target_values(config, catalog, target) for target in settings.targets}  # fail early
    models = load_models(config)
    noise_dim = int(np.median([dim for model in models for dim in model.dims.values()]))
    fitted: list[Probe] = []
    for target, values in columns.items():
        ids = probe_objects(values, models, settings.max_objects, settings.folds, config.seed)
        y = values.loc[ids].to_numpy()
        folds = assign_folds(len(ids), settings.folds, config.seed)
        noise = np.random.default_rng([config.seed, _NOISE_STREAM]).standard_normal((len(ids), noise_dim))
        feature_sets = [(m.name, m.features(ids)) for m in models]
        for name, matrices in [*feature_sets, (RANDOM_MODEL, {RANDOM_MODALITY: noise})]:
            started = time.perf_counter()
            batch = [_probe(name, modality, target, ids, y, folds, features, config)
                     for modality, features in matrices.items()]
            fitted += batch
            log(f"{target} / {name}: {len(ids)} objects, R² {_r2_text(batch)} ({time.perf_counter() - started:.1f} s)")
    out = config.layout.probes
    results = write_outputs(fitted, out, settings.folds)
    return {"directory": str(out.dir), "objects": {t: int(n) for t, n in results.groupby("target")["n"].first().items()},
            "best": _best_per_target(results)}


def _probe(model, modality, target, ids, y, folds, features, config) -> Probe:
    settings = config.analyze.probes
    fit = cross_validate(features, y, folds, with_lightgbm=settings.lightgbm, shap_max=settings.shap_max,
                         seed=config.seed)
    summary = {"dim": features.shape[1], **summarise(fit, y, folds, settings.bootstraps, config.seed)}
    return Probe(model, modality, target, ids, y, folds, fit, summary)


def _r2_text(batch: list[Probe]) -> str:
    def r2(probe: Probe) -> str:
        lgbm = probe.summary.get("r2_lgbm_mean")
        return f"{probe.summary['r2_ridge_mean']:.2f}" + (f"/{lgbm:.2f}" if lgbm is not None else "")

    probe_names = "ridge/lgbm" if batch[0].fit.pred_lgbm is not None else "ridge"
    return f"({probe_names}) " + ", ".join(f"{p.modality} {r2(p)}" for p in batch)


def _best_per_target(results: pd.DataFrame) -> dict:
    real = results[results.model != RANDOM_MODEL]
    best = real.assign(r2=_best_r2(real)).sort_values("r2").groupby("target").last()
    return {target: {"model": row.model, "modality": row.modality, "r2": float(row.r2)}
            for target, row in best.iterrows()}


def _best_r2(results: pd.DataFrame) -> pd.Series:
    """Per row, the better of the two probes' mean R² (Ridge alone when LightGBM is off)."""
    return results.filter(["r2_ridge_mean", "r2_lgbm_mean"]).max(axis=1)


# -- outputs -------------------------------------------------------------------------------------------------
RESULT_COLUMNS = ["model", "modality", "target", "n", "dim", "r2_ridge_mean", "r2_ridge_std", "alpha", "r2_lgbm_mean",
                  "r2_lgbm_std", "gap", "pr", "pr_err", "pr90", "pr90_err", "epd", "epd_err"]


def write_outputs(fitted: list[Probe], out: ProbeFiles, n_folds: int) -> pd.DataFrame:
    """Write every table and figure of `out`; returns the results table."""
    results = pd.DataFrame([{"model": p.model, "modality": p.modality, "target": p.target, **p.summary}
                            for p in fitted]).reindex(columns=RESULT_COLUMNS)
    write_csv(results, out.results, index=False)
    write_table(pa.Table.from_pandas(_predictions(fitted), preserve_index=False), out.predictions)
    if fitted[0].fit.psi is not None:
        write_table(pa.Table.from_pandas(_importances(fitted), preserve_index=False), out.importances)
    else:  # no SHAP without LightGBM: a previous run's importances and Pareto plot would mislead
        for stale in (out.importances, out.pareto_plot):
            stale.unlink(missing_ok=True)
    with atomic_path(out.summary) as temporary:
        temporary.write_text(markdown(results, n_folds))

    with fmb_style():
        _plot_r2(results, out.r2_plot)
        if results["pr"].notna().any():
            _plot_pareto(results, out.pareto_plot)
        for target in results["target"].unique():
            _plot_scatter([p for p in fitted if p.target == target], results, out.scatter_plot(target))
    return results


def _predictions(fitted: list[Probe]) -> pd.DataFrame:
    """Long table of out-of-fold predictions: object_id, target, model, modality, fold, y_true, pred_*."""
    return pd.concat([pd.DataFrame({"object_id": p.object_ids, "target": p.target, "model": p.model,
                                    "modality": p.modality, "fold": p.folds, "y_true": p.values,
                                    "pred_ridge": p.fit.pred_ridge,
                                    "pred_lgbm": p.fit.pred_lgbm if p.fit.pred_lgbm is not None else np.nan})
                      for p in fitted], ignore_index=True)


def _importances(fitted: list[Probe]) -> pd.DataFrame:
    """Long table of SHAP feature importances a_j: target, model, modality, feature, importance."""
    return pd.concat([pd.DataFrame({"target": p.target, "model": p.model, "modality": p.modality,
                                    "feature": np.arange(p.fit.psi.shape[1]),
                                    "importance": feature_importance(p.fit.psi)})
                      for p in fitted], ignore_index=True)


def markdown(results: pd.DataFrame, n_folds: int) -> str:
    """summary.md: one table per target, best (model, modality) first."""
    lines = ["# Physical-parameter probes", "",
             f"Out-of-fold R² over {n_folds} folds (mean ± std across folds). Features are standardised on each "
             f"training fold and clipped at ±{CLIP_SIGMA:g} σ; Ridge's α is chosen by leave-one-out CV within the "
             "training fold (the median over folds is shown). Within a target every model and the "
             f"random-feature baseline ('{RANDOM_MODEL}', i.i.d. Gaussian features) use the same n objects and folds. "
             "gap = R²(LightGBM) - R²(Ridge). PR (participation ratio), PR90 (share of features holding 90 % of the "
             "SHAP importance) and EPD = PR · dim come from LightGBM's TreeSHAP on held-out objects; their errors are "
             "bootstrap standard deviations over those objects (refitting variability is not included).", ""]
    for target, table in results.groupby("target", sort=False):
        lines += [f"## {target} (n = {int(table['n'].iloc[0])})", "",
                  "| model | modality | dim | R² ridge | α | R² LightGBM | gap | PR | PR90 | EPD |",
                  "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for row in table.assign(order=_best_r2(table)).sort_values("order", ascending=False).itertuples():
            lines.append(f"| {row.model} | {row.modality} | {row.dim} | {_pm(row.r2_ridge_mean, row.r2_ridge_std)} | "
                         f"{row.alpha:.3g} | {_pm(row.r2_lgbm_mean, row.r2_lgbm_std)} | {_fmt(row.gap)} | "
                         f"{_pm(row.pr, row.pr_err)} | {_pm(row.pr90, row.pr90_err)} | "
                         f"{_pm(row.epd, row.epd_err, 1)} |")
        lines.append("")
    return "\n".join(lines)


def _fmt(value: float, digits: int = 3) -> str:
    return "-" if pd.isna(value) else f"{value:.{digits}f}"


def _pm(value: float, error: float, digits: int = 3) -> str:
    return _fmt(value, digits) + ("" if pd.isna(error) else f" ± {error:.{digits}f}")


# -- figures ---------------------------------------------------------------------------------------------------
def _model_colours(models) -> dict[str, str]:
    real = [m for m in dict.fromkeys(models) if m != RANDOM_MODEL]
    return {**{m: f"C{i % 10}" for i, m in enumerate(real)}, RANDOM_MODEL: "0.55"}


def _ordered(results: pd.DataFrame) -> pd.DataFrame:
    """Rows of the real models, by model then modality in the canonical order."""
    real = results[results.model != RANDOM_MODEL]
    return real.assign(order=real.modality.map(MODALITIES.index)).sort_values(["model", "order"])



def _plot_r2(results: pd.DataFrame, path: Path) -> None:
    """Bars of mean R² (Ridge hatched, LightGBM solid) with fold std, random-feature baseline dashed."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    targets = list(results["target"].unique())
    groups = _ordered(results)[["model", "modality"]].drop_duplicates()
    colours = _model_colours(groups["model"])
    probes_drawn = [p for p in (("ridge", "Ridge", "//", 0.5), ("lgbm", "LightGBM", "", 1.0))
                    if results[f"r2_{p[0]}_mean"].notna().any()]
    width = 0.8 / len(probes_drawn)
    x = np.arange(len(groups))
    figure, axes = plt.subplots(len(targets), 1, figsize=(max(6.0, 0.75 * len(groups) + 1.5), 2.4 * len(targets) + 0.8),
                                sharex=True, squeeze=False)
    for axis, target in zip(axes[:, 0], targets):
        rows = results[results.target == target].set_index(["model", "modality"])
        values = rows.loc[list(groups.itertuples(index=False, name=None))]
        for k, (probe, _, hatch, alpha) in enumerate(probes_drawn):
            axis.bar(x + (k - (len(probes_drawn) - 1) / 2) * width, values[f"r2_{probe}_mean"], width,
                     yerr=values[f"r2_{probe}_std"], color=[colours[m] for m in groups["model"]], alpha=alpha,
                     hatch=hatch, edgecolor="white", capsize=2, error_kw={"lw": 0.8})
        baseline = _best_r2(rows.loc[[(RANDOM_MODEL, RANDOM_MODALITY)]]).iloc[0]
        axis.axhline(baseline, color="0.3", ls="--", lw=1)
        axis.axhline(0, color="black", lw=0.6)
        lowest = min(results[[f"r2_{p[0]}_mean" for p in probes_drawn]].min().min(), baseline)
        axis.set_ylim(max(lowest - 0.05, -0.3), 1.0)
        axis.set_ylabel(f"R² of {target}")
    axes[-1, 0].set_xticks(x, [f"{m}\n{mod}" for m, mod in groups.itertuples(index=False)], fontsize=8)
    handles = [Patch(facecolor="0.5", alpha=alpha, hatch=hatch, edgecolor="white", label=label)
               for _, label, hatch, alpha in probes_drawn]
    handles.append(Line2D([], [], color="0.3", ls="--", label="random features (best probe)"))
    axes[0, 0].legend(handles=handles, loc="lower left", bbox_to_anchor=(0, 1.02), ncol=len(handles))
    axes[0, 0].set_title("Out-of-fold R² (error bars: std over folds)", pad=24)
    save_figure(figure, path)


def _plot_pareto(results: pd.DataFrame, path: Path) -> None:
    """LightGBM R² against the participation ratio: accurate with few or with many dimensions."""
    import matplotlib.pyplot as plt
    from matplotlib.lines import Line2D

    targets = list(results["target"].unique())
    colours = _model_colours(_ordered(results)["model"])
    markers = {**dict(zip(MODALITIES, "os^")), RANDOM_MODALITY: "x"}
    figure, axes = plt.subplots(1, len(targets), figsize=(3.6 * len(targets) + 1.6, 3.6), sharex=True, squeeze=False)
    for axis, target in zip(axes[0], targets):
        for row in results[results.target == target].itertuples():
            axis.errorbar(row.pr, row.r2_lgbm_mean, xerr=_nan_to_zero(row.pr_err), yerr=_nan_to_zero(row.r2_lgbm_std),
                          marker=markers[row.modality], color=colours[row.model], ms=7, lw=0.8, capsize=2)
        axis.set_title(target)
        axis.set_xlabel("participation ratio PR")
        axis.set_xlim(0, 1.02)
    axes[0, 0].set_ylabel("R² (LightGBM)")
    handles = [Line2D([], [], color=c, marker="o", ls="", label=m) for m, c in colours.items()]
    handles += [Line2D([], [], color="0.4", marker=mk, ls="", label=mod) for mod, mk in markers.items()
                if mod in set(results.modality)]
    axes[0, -1].legend(handles=handles, loc="center left", bbox_to_anchor=(1.02, 0.5))
    save_figure(figure, path)


def _nan_to_zero(value: float) -> float:
    return 0.0 if pd.isna(value) else value


def _plot_scatter(fitted: list[Probe], results: pd.DataFrame, path: Path) -> None:
    """Out-of-fold prediction against truth, one panel per model at its best modality and probe."""
    import matplotlib.pyplot as plt

    rows = _ordered(results[results.target == fitted[0].target])
    panels = []
    for model, table in rows.groupby("model", sort=False):
        best = table.loc[_best_r2(table).idxmax()]
        use_lgbm = pd.notna(best["r2_lgbm_mean"]) and best["r2_lgbm_mean"] >= best["r2_ridge_mean"]
        probe = next(p for p in fitted if (p.model, p.modality) == (model, best["modality"]))
        prediction, label = (probe.fit.pred_lgbm, "LightGBM") if use_lgbm else (probe.fit.pred_ridge, "Ridge")
        panels.append((probe, prediction, f"{model} / {probe.modality} ({label})\nR² = {_best_r2(table).max():.2f}"))
    truth = fitted[0].values
    padding = 0.05 * np.ptp(truth)
    limits = (truth.min() - padding, truth.max() + padding)  # predictions beyond the true range fall off
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    opacity = float(np.clip(400 / len(truth), 0.15, 0.8))  # dense clouds stay readable
    for axis, (probe, prediction, title) in zip(axes[0], panels):
        axis.scatter(truth, prediction, s=3, alpha=opacity, color="C0", rasterized=True)
        axis.plot(limits, limits, color="black", lw=0.8)
        axis.set(xlim=limits, ylim=limits, title=title, xlabel=f"true {probe.target}")
    axes[0, 0].set_ylabel(f"predicted {fitted[0].target} (out of fold)")
    save_figure(figure, path)


def _probe_inputs(config: ResolvedConfig) -> list[Path]:
    catalog = catalog_path(config)
    return embedding_manifests(config) + ([catalog] if catalog else [])


def _no_catalog(config: ResolvedConfig) -> str | None:
    return None if catalog_path(config) or config.run.synth else "no catalog (set data.catalog)"


PROBES = Stage("probes", probes, ("analyze.probes", "seed", "run.models"), inputs=_probe_inputs,
               outputs=lambda config: [config.layout.probes.dir], after=("embed",), applies=_no_catalog)

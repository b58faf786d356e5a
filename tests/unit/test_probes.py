"""Physical-parameter probes: the dimensionality formulas by hand, probes on planted and random targets,
no leakage from held-out objects, and the task end to end on a tiny project."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmb.analyze.probes import (assign_folds, bootstrap_errors, cross_validate, dimensionality, feature_importance,
                                fold_r2, importance_fraction, normalise_contributions, participation_ratio, probes,
                                sample_objects)
from fmb.config import load_config
from fmb.embed.store import write_embeddings as store_embeddings
from fmb.errors import FmbError


# -- formulas -----------------------------------------------------------------------------------------------
def test_participation_ratio_by_hand():
    assert participation_ratio(np.ones(4)) == pytest.approx(1.0)  # all features matter equally
    assert participation_ratio(np.eye(5)[2]) == pytest.approx(1 / 5)  # one feature does
    assert participation_ratio(np.array([3.0, 1.0])) == pytest.approx(16 / (2 * 10))
    assert participation_ratio(np.array([6.0, 3.0, 1.0])) == pytest.approx(100 / (3 * 46))
    assert np.isnan(participation_ratio(np.zeros(3)))


def test_pr90_counts_the_top_features_reaching_90_percent():
    assert importance_fraction(np.ones(4)) == 1.0  # 3 of 4 hold only 75 %
    assert importance_fraction(np.ones(10)) == pytest.approx(0.9)  # 9 of 10 hold exactly 90 %
    assert importance_fraction(np.eye(5)[3]) == pytest.approx(1 / 5)
    assert importance_fraction(np.array([1.0, 6.0, 3.0])) == pytest.approx(2 / 3)  # 6 + 3 reach 90 %, any order
    assert importance_fraction(np.array([1.0, 5.9, 3.0])) == 1.0  # 89 %: the third is needed


def test_dimensionality_and_epd():
    psi = np.array([[0.75, 0.25], [0.75, -0.25]])
    result = dimensionality(psi)
    assert result["pr"] == pytest.approx(0.8)  # importances (0.75, 0.25) are proportional to (3, 1)
    assert result["pr90"] == 1.0
    assert result["epd"] == pytest.approx(1.6)
    assert all(np.isnan(v) for v in dimensionality(np.empty((0, 3))).values())


def test_contributions_are_normalised_per_object_and_empty_objects_dropped():
    phi = np.array([[1.0, -3.0], [2.0, 2.0], [0.0, 0.0]])
    psi = normalise_contributions(phi)
    np.testing.assert_allclose(psi, [[0.25, -0.75], [0.5, 0.5]])
    np.testing.assert_allclose(feature_importance(psi), [0.375, 0.625])


def test_bootstrap_errors():
    rng = np.random.default_rng(0)
    identical = np.tile([[0.5, -0.3, 0.2]], (40, 1))
    assert all(v == pytest.approx(0) for v in bootstrap_errors(identical, 20, rng).values())
    varied = normalise_contributions(rng.normal(size=(200, 6)) * np.arange(1, 7))
    errors = bootstrap_errors(varied, 30, rng)
    assert 0 < errors["pr_err"] < 0.1 and errors["epd_err"] == pytest.approx(6 * errors["pr_err"], rel=0.01)
    assert all(np.isnan(v) for v in bootstrap_errors(varied, 0, rng).values())


# -- objects, folds and probes --------------------------------------------------------------------------------
def test_folds_are_balanced_seeded_and_samples_reproducible():
    folds = assign_folds(103, 5, seed=7)
    assert sorted(np.bincount(folds)) == [20, 20, 21, 21, 21]
    np.testing.assert_array_equal(folds, assign_folds(103, 5, seed=7))
    assert not np.array_equal(folds, assign_folds(103, 5, seed=8))
    ids = np.arange(1000, 0, -1)
    sample = sample_objects(ids, 50, seed=3)
    assert len(sample) == 50 and np.all(np.diff(sample) > 0) and set(sample) <= set(ids)
    np.testing.assert_array_equal(sample, sample_objects(ids, 50, seed=3))
    np.testing.assert_array_equal(sample_objects(ids[:40], 50, seed=3), np.arange(961, 1001))


def test_probe_recovers_a_planted_linear_target_and_not_noise():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(300, 6)) * [1, 10, 0.1, 1, 1, 1]  # unequal scales: the scaler matters
    planted = features @ np.array([1.0, 0.2, -5.0, 0.0, 0.5, 0.0]) + rng.normal(0, 0.02, 300)
    folds = assign_folds(300, 5, seed=0)
    linear = cross_validate(features, planted, folds, with_lightgbm=False)
    assert fold_r2(planted, linear.pred_ridge, folds).mean() > 0.99
    noise = rng.normal(size=300)
    unrelated = cross_validate(features, noise, folds, shap_max=60)
    assert fold_r2(noise, unrelated.pred_ridge, folds).mean() < 0.02
    assert fold_r2(noise, unrelated.pred_lgbm, folds).mean() < 0.02
    assert unrelated.psi.shape == (300, 6)  # every held-out object explained (60 per fold)


def test_held_out_predictions_depend_on_no_other_held_out_object():
    """Standardisation and both probes are fitted on the training fold only: changing one held-out
    object (wildly) changes its own prediction and the other folds' (it trains them), never those
    of the other objects held out with it."""
    rng = np.random.default_rng(2)
    features = rng.normal(size=(150, 4))
    target = features @ np.array([1.0, -1.0, 0.5, 0.0]) + rng.normal(0, 0.3, 150)
    folds = assign_folds(150, 3, seed=0)
    before = cross_validate(features, target, folds, shap_max=50)
    changed = np.flatnonzero(folds == 0)[0]
    features[changed] = [1e3, -2e3, 5e2, 4e3]
    after = cross_validate(features, target, folds, shap_max=50)
    same_fold = (folds == 0) & (np.arange(150) != changed)
    for name in ("pred_ridge", "pred_lgbm"):
        np.testing.assert_allclose(getattr(after, name)[same_fold], getattr(before, name)[same_fold])
    assert after.pred_ridge[changed] != pytest.approx(before.pred_ridge[changed])
    assert not np.allclose(after.pred_ridge[folds != 0], before.pred_ridge[folds != 0])


# -- the task on a tiny project ---------------------------------------------------------------------------------
N_OBJECTS = 150


#: The run's two models (`run.models`, in this order): registered names standing for any two encoders.
ALPHA, BETA = "pixels", "aion"


def write_embeddings(config, model: str, ids: np.ndarray, matrices: dict) -> None:
    files = config.layout.embeddings(model)
    files.dir.mkdir(parents=True)
    store_embeddings(files.dir, {"model": model}, ids, matrices)


def tiny_project(root: Path, catalog_columns: dict | None = None) -> np.ndarray:
    """Model ALPHA (image, spectrum) encodes Z linearly in its image; BETA (image) misses 10 objects."""
    rng = np.random.default_rng(0)
    ids = np.arange(5000, 5000 + N_OBJECTS)
    image = rng.normal(size=(N_OBJECTS, 6)).astype(np.float32)
    z = 0.5 + 0.2 * image[:, 0] - 0.1 * image[:, 1]
    logm = 10 + rng.normal(size=N_OBJECTS)
    logm[:12] = np.nan  # no mass for some objects: the LOGM probe uses fewer
    config = tiny_config(root)
    write_embeddings(config, ALPHA, ids, {"image": image, "spectrum": rng.normal(size=(N_OBJECTS, 5))})
    write_embeddings(config, BETA, ids[10:], {"image": rng.normal(size=(N_OBJECTS - 10, 4))})
    columns = {"TARGETID": ids, "Z": z, "LOGM": logm, "SPECTYPE": ["GALAXY"] * N_OBJECTS, **(catalog_columns or {})}
    pd.DataFrame(columns).to_parquet(config.path(config.data.catalog))
    return ids


def tiny_config(project: Path, *extra: str):
    return load_config(root=project, sets=[f"run.models=[{ALPHA}, {BETA}]", "data.catalog=catalog.parquet",
                                           "analyze.probes.targets=[Z, LOGM]",
                                           "analyze.probes.folds=3", "analyze.probes.bootstraps=5",
                                           "analyze.probes.shap_max=50", *extra])


def test_probes_task_end_to_end(project):
    ids = tiny_project(project)
    lines = []
    config = tiny_config(project)
    summary = probes(config, log=lines.append)
    out = config.layout.probes
    for path in (out.results, out.summary, out.importances, out.predictions, out.r2_plot, out.pareto_plot,
                 out.scatter_plot("Z"), out.scatter_plot("LOGM")):
        assert path.stat().st_size > 0, path.name
    assert out.scatter_plots() == sorted([out.scatter_plot("Z"), out.scatter_plot("LOGM")])
    assert len(lines) == 6  # (ALPHA, BETA, random) x (Z, LOGM)

    results = pd.read_csv(out.results)
    assert set(zip(results.model, results.modality)) == {(ALPHA, "image"), (ALPHA, "spectrum"), (BETA, "image"),
                                                         ("random", "gaussian")}
    n = results.groupby("target")["n"].unique()
    assert list(n["Z"]) == [N_OBJECTS - 10] and list(n["LOGM"]) == [N_OBJECTS - 12]  # intersection, finite target
    assert summary["objects"] == {"Z": N_OBJECTS - 10, "LOGM": N_OBJECTS - 12}
    z = results[results.target == "Z"].set_index(["model", "modality"])
    assert z.loc[(ALPHA, "image"), "r2_ridge_mean"] > 0.99
    assert z.loc[("random", "gaussian"), "r2_ridge_mean"] < 0.1
    assert summary["best"]["Z"]["model"] == ALPHA and summary["best"]["Z"]["modality"] == "image"
    assert results[["pr", "pr90", "epd", "pr_err"]].notna().all().all()
    assert ((results.pr > 0) & (results.pr <= 1)).all()
    np.testing.assert_allclose(results.epd, results.pr * results.dim)

    predictions = pd.read_parquet(out.predictions)
    for _, table in predictions.groupby("target"):
        by_probe = table.pivot(index="object_id", columns=["model", "modality"], values="fold")
        assert by_probe.notna().all().all()  # the same objects in every probe ...
        assert (by_probe.nunique(axis=1) == 1).all()  # ... in the same fold
    assert set(predictions.object_id) <= set(ids[10:])

    importances = pd.read_parquet(out.importances)
    assert len(importances) == (6 + 5 + 4 + 5) * 2  # random features: the median model dimension of 6, 5, 4
    assert f"| {ALPHA} | image |" in out.summary.read_text()


def test_probes_without_lightgbm(project):
    tiny_project(project)
    config = tiny_config(project, "analyze.probes.lightgbm=false", "analyze.probes.targets=[Z]")
    out = config.layout.probes
    out.dir.mkdir(parents=True)
    for stale in (out.pareto_plot, out.importances):  # from an earlier run with LightGBM
        stale.write_bytes(b"old")
    probes(config, log=lambda line: None)
    results = pd.read_csv(out.results)
    assert results.r2_lgbm_mean.isna().all() and results.r2_ridge_mean.notna().all()
    assert not out.pareto_plot.exists() and not out.importances.exists()


def test_clear_errors(project):
    with pytest.raises(FmbError, match="no catalog found"):
        probes(tiny_config(project), log=lambda line: None)
    tiny_project(project, {"LOGSFR": np.r_[np.ones(20), np.full(N_OBJECTS - 20, np.nan)]})
    with pytest.raises(FmbError, match=r"no column 'MASS'.*catalog\.parquet|catalog\.parquet.*no column 'MASS'"):
        probes(tiny_config(project, "analyze.probes.targets=[MASS]"), log=lambda line: None)
    with pytest.raises(FmbError, match=f"too few objects to probe LOGSFR: 10 .*{ALPHA} 20, {BETA} 10"):
        probes(tiny_config(project, "analyze.probes.targets=[LOGSFR]"), log=lambda line: None)

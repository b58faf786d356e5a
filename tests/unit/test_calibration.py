"""Calibrated tail probabilities, the Cauchy combination, residual scores and the consensus ranking,
on data whose answer is known."""

from functools import partial

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from fmb.detect.calibrate import TailCalibrator, cauchy_combine, significance
from fmb.detect.density import CrossFitted, Reducer
from fmb.detect.fusion import Calibration, calibrate
from fmb.detect.residual import PCAResidual
from fmb.detect.scores import (CALIBRATED_FUSION, CONSENSUS, FIT_SAMPLE, calibrated_inputs, p_column, ranks_by_id,
                               score_column)
from fmb.detect.consensus import write_consensus
from fmb.detect.population import connection
from fmb.plugins import detector_class


def gaussian_mixture(n, d=6, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(99).normal(0, 5, size=(3, d))  # the same mixture for every sample
    return centres[rng.integers(0, 3, n)] + rng.normal(0, 1, size=(n, d))


@pytest.mark.parametrize("method", ["knn", "iforest"])
def test_cross_fitted_p_values_of_ordinary_objects_are_uniform(method):
    """The reference is the fit sample's cross-fitted scores; new draws from the same mixture get
    p-values that a KS test cannot tell from uniform, and the tail holds its level. Three independent
    surveys: a single KS p-value is itself uniform, so one of them may be small by chance."""
    ks_p_values, tail_rates = [], []
    for survey in range(3):
        fit_x, new_x = gaussian_mixture(12_000, seed=10 + survey), gaussian_mixture(1_500, seed=20 + survey)
        ids = np.arange(len(fit_x))
        crossfit = CrossFitted(partial(detector_class(method)), n_folds=5, seed=0).fit(fit_x, ids)
        calibrator = TailCalibrator(0.05).fit(crossfit.score(fit_x, ids))
        p = calibrator.p_value(crossfit.score(new_x, np.arange(10**6, 10**6 + len(new_x))))
        ks_p_values.append(stats.kstest(p, "uniform").pvalue)
        tail_rates.append((p < 0.05).mean())
    assert np.median(ks_p_values) > 0.05 and min(ks_p_values) > 0.001
    assert 0.035 < np.mean(tail_rates) < 0.065


def test_tail_probability_is_monotone_and_keeps_extremes_apart():
    calibrator = TailCalibrator(0.05).fit(np.random.default_rng(0).normal(size=5000))
    scores = np.array([-3.0, 0.0, 1.0, 2.0, 3.0, 6.0, 50.0, 500.0])
    log_p = calibrator.log_p_value(scores)
    assert np.all(np.diff(log_p) < 0)  # strictly decreasing: beyond every reference too
    assert np.exp(log_p[1]) == pytest.approx(0.5, abs=0.03)
    assert np.isnan(calibrator.log_p_value(np.array([np.nan]))[0])


def test_cauchy_combination_by_hand_and_under_independence():
    # one input: the rule returns it; equal inputs: the rule returns their common value
    assert np.exp(cauchy_combine(np.log([[0.01]])))[0] == pytest.approx(0.01)
    assert np.exp(cauchy_combine(np.log([[0.2, 0.2, 0.2]])))[0] == pytest.approx(0.2)
    # two inputs by the formula: T = (tan(0.4 pi) + tan(-0.3 pi)) / 2
    t = (np.tan(0.4 * np.pi) + np.tan(-0.3 * np.pi)) / 2
    assert np.exp(cauchy_combine(np.log([[0.1, 0.8]])))[0] == pytest.approx(0.5 - np.arctan(t) / np.pi)
    # far below float range: still ordered, and an absent (NaN) input is left out
    extreme = cauchy_combine(np.array([[-5000.0, -1.0], [-4000.0, -1.0], [np.nan, np.log(0.01)]]))
    assert extreme[0] < extreme[1] < 0 and np.exp(extreme[2]) == pytest.approx(0.01)
    u = np.random.default_rng(3).uniform(size=(40_000, 5))
    assert (np.exp(cauchy_combine(np.log(u))) < 0.01).mean() == pytest.approx(0.01, abs=0.002)


def test_one_extreme_input_ranks_above_mildly_high_in_all():
    """Seven correlated inputs; object 'one' is 6 sigma in a single input and ordinary elsewhere,
    object 'all' is 1.5 sigma in every input. The calibrated fusion ranks 'one' first."""
    rng = np.random.default_rng(0)
    n = 4000
    shared = rng.normal(size=(n, 1))
    values = 0.6 * shared + 0.8 * rng.normal(size=(n, 7))  # correlated inputs, unit variance
    values[0] = [6.0, 0, 0, 0, 0, 0, 0]
    values[1] = 1.5
    columns = ([score_column(m, "knn") for m in ("image", "spectrum", "joint")]
               + [score_column(m, "residual") for m in ("image", "spectrum", "joint")] + ["mismatch"])
    frame = pd.DataFrame(values, columns=columns).assign(object_id=np.arange(n))
    reference = np.ones(n, dtype=bool)
    scored = calibrate(frame, Calibration(0.05), ["knn"], reference)
    ranks = ranks_by_id(scored, CALIBRATED_FUSION)
    assert ranks[0] == 1 and ranks[1] > 1
    assert ranks[0] < ranks[1]
    # every p_ column of ordinary objects is near uniform; the fused one too
    p = scored[p_column(CALIBRATED_FUSION)].to_numpy()[2:]
    assert stats.kstest(p, "uniform").statistic < 0.05


def test_the_joint_embedding_counts_in_the_fusion_only_where_a_way_it_joins_has_no_channel():
    """The joint embedding is the image and the spectrum side by side: where the image, the spectrum
    and the pairing each have a channel it is not fused again (an object odd in the joint density
    alone stays ordinary); without the misalignment it is the only view of the pairing and counts."""
    rng = np.random.default_rng(1)
    n = 3000
    columns = [score_column(m, "knn") for m in ("image", "spectrum", "joint")] + ["mismatch"]
    frame = pd.DataFrame(rng.normal(size=(n, 4)), columns=columns).assign(object_id=np.arange(n))
    frame.loc[0, score_column("joint", "knn")] = 8.0
    reference = np.ones(n, dtype=bool)
    combined = [score_column(m, "combined") for m in ("image", "spectrum", "joint")]
    assert calibrated_inputs([*combined, "mismatch"]) == [*combined[:2], "mismatch"]
    assert calibrated_inputs(combined) == combined
    with_pairing = ranks_by_id(calibrate(frame.copy(), Calibration(0.05), ["knn"], reference), CALIBRATED_FUSION)
    without = ranks_by_id(calibrate(frame.drop(columns="mismatch"), Calibration(0.05), ["knn"], reference),
                          CALIBRATED_FUSION)
    assert with_pairing[0] > n // 100 and without[0] == 1


def test_residual_finds_an_object_off_the_manifold_that_the_pca_density_misses():
    """Objects on a 3-dimensional plane in 20 dimensions, plus one with an ordinary position on the
    plane and a large step off it: kNN on the 3 PCA components cannot see it, the residual can."""
    rng = np.random.default_rng(0)
    n, basis = 3000, np.linalg.qr(rng.normal(size=(20, 3)))[0].T
    x = rng.normal(size=(n, 3)) @ basis + 0.05 * rng.normal(size=(n, 20))
    off_plane = np.linalg.svd(basis, full_matrices=True)[2][3]  # a direction orthogonal to the plane
    x[0] = x[0] + 1.0 * off_plane
    ids = np.arange(n)
    reduced = Reducer(3).fit(x).transform(x)
    density = CrossFitted(partial(detector_class("knn")), 5, 0).fit(reduced, ids).score(reduced, ids)
    residual = CrossFitted(partial(PCAResidual, 3), 5, 0).fit(x, ids).score(x, ids)
    frame = pd.DataFrame({"object_id": ids, "density": density, "residual": residual})
    assert ranks_by_id(frame, "residual")[0] == 1
    assert ranks_by_id(frame, "density")[0] > 0.05 * n


def test_consensus_combines_the_models_each_object_has(tmp_path):
    rng = np.random.default_rng(0)

    def model_frame(ids, extreme_id):
        significance_values = significance(np.log(rng.uniform(size=len(ids))))
        significance_values[ids == extreme_id] = 12.0
        return pd.DataFrame({"object_id": ids, CALIBRATED_FUSION: significance_values, FIT_SAMPLE: True})

    ids = np.arange(2000)
    frames = {"a": model_frame(ids, 5), "b": model_frame(ids[ids != 7], 5)}  # b never saw object 7
    tables = {model: tmp_path / f"{model}.parquet" for model in frames}
    for model, frame in frames.items():
        frame.sample(frac=1.0, random_state=0).to_parquet(tables[model])  # the join must not rely on row order
    with connection(memory_gb=1.0, spill=tmp_path / "spill") as con:
        assert write_consensus(con, tables, 0.05, tmp_path / "consensus.parquet")
        assert not write_consensus(con, {"a": tables["a"]}, 0.05, tmp_path / "alone.parquet")
    consensus = pd.read_parquet(tmp_path / "consensus.parquet")
    assert consensus.object_id.is_monotonic_increasing and not (tmp_path / "spill").exists()
    assert len(consensus) == 2000 and consensus.loc[consensus.object_id == 7, "n_models"].item() == 1
    assert ranks_by_id(consensus, CONSENSUS)[5] == 1
    assert np.isfinite(consensus[CONSENSUS]).all()

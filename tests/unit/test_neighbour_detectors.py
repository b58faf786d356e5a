"""fmb's kNN and LOF (neighbours by faiss) score as PyOD's KNN and LOF do, from a float32 fit sample."""

import io

import numpy as np
import pytest
import torch
from pyod.models.knn import KNN
from pyod.models.lof import LOF

from fmb.detect.methods.knn import KNNDetector
from fmb.detect.methods.lof import LOFDetector


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 4, size=(3, 6))
    fit = (centres[rng.integers(0, 3, 800)] + rng.normal(size=(800, 6))).astype(np.float32)
    new = np.vstack([fit[:5] + 0.01, rng.normal(0, 6, size=(40, 6))]).astype(np.float32)
    return fit, new


@pytest.mark.parametrize("method", ["mean", "largest", "median"])
def test_knn_scores_as_pyod(method):
    fit, new = _data()
    expected = KNN(n_neighbors=7, method=method).fit(fit.astype(np.float64)).decision_function(new.astype(np.float64))
    np.testing.assert_allclose(KNNDetector(n_neighbors=7, method=method).fit(fit).score(new), expected, rtol=1e-4)


def test_lof_scores_as_pyod():
    fit, new = _data(1)
    expected = LOF(n_neighbors=15).fit(fit.astype(np.float64)).decision_function(new.astype(np.float64))
    np.testing.assert_allclose(LOFDetector(n_neighbors=15).fit(fit).score(new), expected, rtol=1e-4)


def test_lof_with_duplicated_fit_rows_stays_finite_and_as_pyod():
    fit, new = _data(2)
    fit = np.vstack([fit, fit[:50]])  # exact duplicates: a row's first neighbour may be its twin
    expected = LOF(n_neighbors=5).fit(fit.astype(np.float64)).decision_function(new.astype(np.float64))
    scores = LOFDetector(n_neighbors=5).fit(fit).score(new)
    assert np.isfinite(scores).all()
    np.testing.assert_allclose(scores, expected, rtol=1e-3)


def test_more_neighbours_than_fit_rows_is_capped():
    fit, new = _data(3)
    assert np.isfinite(KNNDetector(n_neighbors=50).fit(fit[:10]).score(new)).all()
    assert np.isfinite(LOFDetector(n_neighbors=50).fit(fit[:10]).score(new)).all()


@pytest.mark.parametrize("make", [KNNDetector, LOFDetector])
def test_saved_state_is_the_fit_sample_in_float32(make):
    fit = np.random.default_rng(4).normal(size=(20_000, 64))
    buffer = io.BytesIO()
    torch.save(make().fit(fit), buffer)
    # LOF adds two float64 numbers per fit row (k-distance, density); PyOD's keep float64 copies and a
    # ball tree (about 3x)
    assert buffer.tell() < fit.size * 4 * 1.15

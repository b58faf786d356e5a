"""fmb's ECOD: PyOD's scores for a batch of one, independent of the batch, and small when saved."""

import io

import numpy as np
import torch
from pyod.models.ecod import ECOD

from fmb.detect.methods.ecod import ECODDetector


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    fit = np.column_stack([rng.normal(size=500), rng.exponential(size=500), -rng.exponential(size=500),
                           rng.integers(0, 4, 500).astype(float)])  # skew 0-ish, +, -, and ties
    new = np.vstack([fit[:5], rng.normal(size=(20, 4)) * 3])
    return fit, new


def test_each_object_scores_as_pyod_scores_it_alone():
    fit, new = _data()
    ours = ECODDetector().fit(fit)
    reference = ECOD().fit(fit)
    expected = [reference.decision_function(row[None])[0] for row in new]
    np.testing.assert_allclose(ours.score(new), expected, rtol=1e-5)


def test_scores_do_not_depend_on_the_batch():
    fit, new = _data(1)
    detector = ECODDetector().fit(fit)
    whole = detector.score(new)
    np.testing.assert_allclose(np.concatenate([detector.score(new[:3]), detector.score(new[3:])]), whole)
    np.testing.assert_allclose(detector.score(new[::-1])[::-1], whole)


def test_farther_in_a_tail_scores_higher():
    fit, _ = _data(2)
    detector = ECODDetector().fit(fit)
    median = np.median(fit, axis=0)
    assert detector.score((median + 10 * fit.std(0))[None])[0] > detector.score(median[None])[0]


def test_saved_state_is_one_float32_copy_of_the_fit_sample():
    fit = np.random.default_rng(3).normal(size=(20_000, 64))
    buffer = io.BytesIO()
    torch.save(ECODDetector().fit(fit), buffer)
    assert buffer.tell() < fit.size * 4 * 1.05  # PyOD's ECOD keeps about six float64 n x d matrices

"""Odd for its redshift (fmb.detect.conditional): an object whose colours are ordinary at another
redshift, but not at its own, is found; objects without a redshift skip the channel."""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.neighbors import NearestNeighbors

from fmb.detect.conditional import RedshiftConditional, with_redshift
from fmb.detect.density import CrossFitted, load, save
from fmb.detect.fusion import Calibration, adjust, calibrate
from fmb.detect.scores import (ADJUSTED_FUSION, CALIBRATED_FUSION, REDSHIFT, REDSHIFT_CHANNEL, rank_descending,
                               score_column)

N, D = 3000, 6


def colours(z: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Six colours that move with redshift (a band shift), each with its own curve, plus scatter."""
    curves = np.column_stack([np.sin(2.5 * z + k) + 0.6 * k * z for k in range(D)])
    return curves + 0.08 * rng.standard_normal((len(z), D))


def survey(seed: int = 0):
    """Ordinary objects at z in [0.05, 1.5]; object 0 sits at z = 0.2 with the colours of z = 1.2:
    every colour is one that ordinary objects have, at another redshift."""
    rng = np.random.default_rng(seed)
    z = rng.uniform(0.05, 1.5, N)
    x = colours(z, rng)
    z[0] = 0.2
    x[0] = colours(np.array([1.2]), rng)[0]
    return np.arange(N, dtype=np.int64) + 1000, z, x


def test_an_object_with_the_colours_of_another_redshift_is_found_at_the_top():
    ids, z, x = survey()
    scores = CrossFitted(RedshiftConditional, 5, 0).fit(with_redshift(z, x), ids).score(with_redshift(z, x), ids)
    assert rank_descending(scores)[0] == 1
    # without the redshift it is ordinary: the distance to its 10th neighbour is nowhere near the top
    distance = NearestNeighbors(n_neighbors=11).fit(x).kneighbors(x)[0][:, -1]
    assert rank_descending(distance)[0] > 0.05 * N, rank_descending(distance)[0]


def test_objects_without_a_redshift_get_no_conditional_score_and_keep_the_others(tmp_path):
    ids, z, x = survey(1)
    z[5:50] = np.nan
    fitted = CrossFitted(RedshiftConditional, 5, 0).fit(with_redshift(z, x)[np.isfinite(z)], ids[np.isfinite(z)])
    save(fitted, tmp_path / "conditional.pt")  # a saved detector loads with the allowed classes only
    scores = load(tmp_path / "conditional.pt").score(with_redshift(z, x), ids)
    assert np.isnan(scores[5:50]).all() and np.isfinite(np.delete(scores, np.s_[5:50])).all()

    rng = np.random.default_rng(2)
    frame = pd.DataFrame({"object_id": ids, score_column("joint", "flow"): rng.standard_normal(N),
                          score_column("joint", REDSHIFT): scores})
    every = np.ones(N, dtype=bool)
    calibration = Calibration(0.05)
    frame = adjust(calibrate(frame, calibration, ["flow"], every), calibration, np.zeros((N, 0)), every)
    assert np.isnan(frame[REDSHIFT_CHANNEL].to_numpy()[5:50]).all()
    assert np.isfinite(frame[ADJUSTED_FUSION].to_numpy()).all()  # the other channels still rank them
    assert rank_descending(frame[ADJUSTED_FUSION].to_numpy())[0] <= 3  # the odd-for-its-redshift object


def test_odd_for_its_redshift_is_the_image_channel_not_a_channel_of_its_own():
    """The image odd for its redshift only: its image channel (and so both fusions) ranks it first,
    among image, spectrum and pairing channels that do not see it."""
    ids, z, x = survey(3)
    image_z = CrossFitted(RedshiftConditional, 5, 0).fit(with_redshift(z, x), ids).score(with_redshift(z, x), ids)
    rng = np.random.default_rng(4)
    frame = pd.DataFrame({"object_id": ids, score_column("image", "flow"): rng.standard_normal(N),
                          score_column("spectrum", "flow"): rng.standard_normal(N),
                          "mismatch": rng.standard_normal(N), score_column("image", REDSHIFT): image_z})
    every = np.ones(N, dtype=bool)
    calibration = Calibration(0.05)
    frame = adjust(calibrate(frame, calibration, ["flow"], every), calibration, np.zeros((N, 0)), every)
    for column in (score_column("image", "combined"), CALIBRATED_FUSION, ADJUSTED_FUSION):
        assert rank_descending(frame[column].to_numpy())[0] == 1, column
    assert rank_descending(frame[score_column("spectrum", "combined")].to_numpy())[0] > 0.05 * N

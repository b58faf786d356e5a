"""A default ranking that a nuisance tail cannot flood (fmb.detect.nuisance, fmb.detect.fusion.adjust):
an ordinary object with a bright neighbour stays out of the default's top 5 %, anomalies stay in."""

from __future__ import annotations

import numpy as np
import pandas as pd

from fmb.detect.density import load, save
from fmb.detect.fusion import Calibration, adjust, calibrate
from fmb.detect.nuisance import NuisanceCalibrator, object_context
from fmb.detect.scores import ADJUSTED_FUSION, CALIBRATED_FUSION, DEFAULT_RANKING, score_column, top_fraction

N = 6000
COVARIATES = ["neighbours", "neighbour_flux_ratio", "edge"]


def sky(seed: int = 0):
    """Scores of two channels on a crowded sky: 25 % of objects have a neighbour, whose flux ratio
    raises their image score (the image detector sees the neighbour, not the object); 1 % are
    anomalies, half odd in the image, half in the spectrum, some of them with neighbours too."""
    rng = np.random.default_rng(seed)
    neighbours = (rng.random(N) < 0.25).astype(float)
    ratio = neighbours * rng.lognormal(0.0, 1.0, N)
    edge = (rng.random(N) < 0.03).astype(float)
    image = rng.standard_normal(N) + 2.5 * np.log1p(ratio) + 1.5 * edge
    spectrum = rng.standard_normal(N)
    anomalous = np.zeros(N, dtype=bool)
    anomalous[rng.choice(N, 60, replace=False)] = True
    image_odd = anomalous & (np.arange(N) % 2 == 0)
    image[image_odd] += 7.0
    spectrum[anomalous & ~image_odd] += 6.0
    frame = pd.DataFrame({"object_id": np.arange(N, dtype=np.int64), score_column("image", "flow"): image,
                          score_column("spectrum", "flow"): spectrum})
    return frame, np.column_stack([neighbours, ratio, edge]), anomalous


def scored(frame: pd.DataFrame, covariates: np.ndarray) -> pd.DataFrame:
    every = np.ones(len(frame), dtype=bool)
    calibration = Calibration(0.05)
    return adjust(calibrate(frame.copy(), calibration, ["flow"], every), calibration, covariates, every)


def test_an_ordinary_object_with_a_bright_neighbour_stays_out_of_the_defaults_top_5_percent():
    frame, covariates, anomalous = sky()
    result = scored(frame, covariates)
    ordinary = np.flatnonzero(~anomalous)
    brightest = ordinary[np.argmax(covariates[ordinary, 1])]  # the ordinary object with the brightest neighbour
    assert DEFAULT_RANKING == ADJUSTED_FUSION
    unadjusted, default = (set(top_fraction(result[c].to_numpy(), 0.05)) for c in (CALIBRATED_FUSION, DEFAULT_RANKING))
    assert brightest in unadjusted  # the nuisance floods the unadjusted combination ...
    assert brightest not in default  # ... and not the default
    crowded = covariates[:, 0] > 0
    # the default's top 5 % holds crowded ordinary objects at about their share, not a flood of them
    share = crowded[list(default)][~anomalous[list(default)]].mean()
    assert share < 0.35 < crowded[list(unadjusted)][~anomalous[list(unadjusted)]].mean(), share
    # and it finds the anomalies, those with neighbours included, and sooner: more in the top 1 %
    assert anomalous[list(default)].sum() == anomalous.sum()
    assert (anomalous & crowded)[list(default)].sum() == (anomalous & crowded).sum()
    first = {c: anomalous[top_fraction(result[c].to_numpy(), 0.01)].sum() for c in (CALIBRATED_FUSION, DEFAULT_RANKING)}
    assert first[DEFAULT_RANKING] > first[CALIBRATED_FUSION], first


def test_without_covariates_the_adjustment_is_one_calibration(tmp_path):
    frame, _, anomalous = sky(1)
    result = scored(frame, np.zeros((N, 0)))
    assert np.corrcoef(result[ADJUSTED_FUSION], result[CALIBRATED_FUSION])[0, 1] > 0.99
    image = frame[score_column("image", "flow")].to_numpy()
    save(NuisanceCalibrator().fit(image, np.zeros((N, 0))), tmp_path / "plain.pt")  # loads with the allowed classes
    assert load(tmp_path / "plain.pt").bins == 1


def test_bins_are_never_smaller_than_their_share_and_the_calibrator_saves(tmp_path):
    frame, covariates, _ = sky(2)
    image = frame[score_column("image", "flow")].to_numpy()
    calibrator = NuisanceCalibrator(0.05, min_leaf_share=0.05).fit(image, covariates)
    leaves = calibrator.tree_.apply(covariates)
    assert calibrator.bins > 1 and np.bincount(leaves)[np.unique(leaves)].min() >= 0.05 * N
    save(calibrator, tmp_path / "nuisance.pt")  # loads with the allowed classes only
    np.testing.assert_array_equal(load(tmp_path / "nuisance.pt").log_p_value(image, covariates),
                                  calibrator.log_p_value(image, covariates))


def test_the_context_reads_redshifts_and_covariates_by_object_id(tmp_path):
    catalog, table = tmp_path / "redshifts.parquet", tmp_path / "crowding.parquet"
    pd.DataFrame({"TARGETID": [3, 1, 2], "Z": [0.3, 0.1, np.nan]}).to_parquet(catalog)
    pd.DataFrame({"object_id": [2, 3], "neighbours": [1.0, 4.0], "label": ["a", "b"]}).to_parquet(table)
    context = object_context(catalog, [table])
    assert context.covariates == ["neighbours"]  # numeric columns only
    np.testing.assert_array_equal(context.redshift(np.array([1, 2, 3, 9])), [0.1, np.nan, 0.3, np.nan])
    np.testing.assert_array_equal(context.covariate_matrix(np.array([3, 1, 2]))[:, 0], [4.0, np.nan, 1.0])
    assert np.isnan(object_context(None, []).redshift(np.array([1]))).all()

"""The re-rankers on a planted survey and on a real scored run, the random slice of every page, the
discovery curve, and `fmb rerank`."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_config
from typer.testing import CliRunner

from fmb.app.labels import LabelStore
from fmb.app.rerank import (DEFAULT_RANDOM_FRACTION, RERANKERS, discovery_curve, interleave_random, load_inputs,
                            rerank, rerank_loaded)
from fmb.cli import app
from fmb.detect.scores import rank_descending
from fmb.errors import FmbError

HIDDEN = 25  # unlabelled members of the interesting cluster


def planted(seed: int = 0):
    """600 objects in 8 dimensions: an ordinary cloud (anomaly 0-0.4), a tight cluster A far out on
    one axis (anomaly 0.5-0.8) and another, B, on the other side (anomaly 0.8-1: the plain top 30).
    Five of A are labelled 5 (interesting), five of B 0 (dull)."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(600, 8))
    anomaly = rng.uniform(0, 0.4, 600)
    a, b = np.arange(30), np.arange(30, 60)
    X[a], X[b] = rng.normal(size=(30, 8)) * 0.3, rng.normal(size=(30, 8)) * 0.3
    X[a, 0] += 6
    X[b, 0] -= 6
    anomaly[a], anomaly[b] = rng.uniform(0.5, 0.8, 30), rng.uniform(0.8, 1.0, 30)
    labelled = np.r_[a[:5], b[:5]]
    return X, anomaly, labelled, np.r_[np.full(5, 5.0), np.zeros(5)], a[5:]


def top_unlabelled(scores: np.ndarray, labelled: np.ndarray, count: int) -> np.ndarray:
    free = np.setdiff1d(np.arange(len(scores)), labelled)
    return free[np.argsort(-scores[free], kind="stable")[:count]]


@pytest.mark.parametrize("method", list(RERANKERS))
def test_labels_bring_the_interesting_clusters_neighbours_up(method: str):
    X, anomaly, labelled, interest, hidden = planted()
    assert np.isin(top_unlabelled(anomaly, labelled, HIDDEN), hidden).sum() == 0  # plain: B fills the top
    scores = RERANKERS[method](seed=0).fit(X, anomaly, labelled, interest).scores_
    assert scores.shape == anomaly.shape and np.isfinite(scores).all()
    assert np.isin(top_unlabelled(scores, labelled, HIDDEN), hidden).sum() > HIDDEN // 2  # from none


@pytest.mark.parametrize("method", list(RERANKERS))
def test_no_label_gives_the_anomaly_ranking(method: str):
    X, anomaly, *_ = planted()
    anomaly[[3, 4]] = anomaly[5]  # ties stay ties
    anomaly[7] = np.nan  # unranked: last
    scores = RERANKERS[method](seed=0).fit(X, anomaly, [], []).scores_
    finite = np.isfinite(anomaly)
    np.testing.assert_array_equal(rank_descending(scores)[finite], rank_descending(anomaly[finite]))
    assert rank_descending(scores)[7] == len(anomaly)


@pytest.mark.parametrize("method", list(RERANKERS))
def test_each_reranker_is_deterministic_for_its_seed(method: str):
    X, anomaly, labelled, interest, _ = planted()
    first = RERANKERS[method](seed=3).fit(X, anomaly, labelled, interest).scores_
    np.testing.assert_array_equal(first, RERANKERS[method](seed=3).fit(X, anomaly, labelled, interest).scores_)


def test_bad_inputs_are_refused():
    X, anomaly, labelled, interest, _ = planted()
    with pytest.raises(FmbError, match="one interest per labelled object"):
        RERANKERS["gp_ei"]().fit(X, anomaly, labelled, interest[:3])
    with pytest.raises(FmbError, match="interest must lie in 0..5"):
        RERANKERS["propagation"]().fit(X, anomaly, labelled, interest + 1)
    with pytest.raises(FmbError, match="outside X"):
        RERANKERS["astronomaly"]().fit(X, anomaly, [600], [1])


@pytest.mark.parametrize(("size", "fraction", "drawn"), [(10, 0.1, 1), (10, 0.3, 3), (10, 0.01, 1), (7, 0.0, 0)])
def test_every_page_has_its_random_slice(size: int, fraction: float, drawn: int):
    order = np.arange(1000, 1095)[::-1]
    shown, is_random = interleave_random(order, size, fraction, seed=1)
    assert sorted(shown) == sorted(order)  # every object once
    for start in range(0, len(order) - size, size):  # every full page
        assert is_random[start:start + size].sum() == drawn
        assert not is_random[start:start + size - drawn].any()  # the random ones end the page
    ranked_part = shown[~is_random]
    assert (np.diff(ranked_part) < 0).all()  # the rest keeps the given order
    again = interleave_random(order, size, fraction, seed=1)
    np.testing.assert_array_equal(again[0], shown)
    if drawn:
        assert not np.array_equal(interleave_random(order, size, fraction, seed=2)[0], shown)


def test_random_picks_come_from_beyond_the_page():
    order = np.arange(200)
    shown, is_random = interleave_random(order, 10, DEFAULT_RANDOM_FRACTION, seed=0)
    assert np.array_equal(shown[:9], order[:9])
    assert (shown[is_random][:5] > 8).all()


def test_discovery_curve_by_hand():
    interest = {5: 4, 3: 1, 9: 5, 7: 3, 2: 4}
    np.testing.assert_array_equal(discovery_curve([5, 3, 9, 1, 7, 2], interest), [1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(discovery_curve([5, 3, 9], pd.Series(interest), threshold=5), [0, 0, 1])
    assert len(discovery_curve([], interest)) == 0


# -- a real scored run ------------------------------------------------------------------------------
def test_a_runs_rerank_follows_its_labels(scored_run: Path):
    config = run_config(scored_run)
    inputs = load_inputs(config)
    assert inputs.model == "pixels" and inputs.ranking == "fused_cauchy" and len(inputs.object_ids) == 300
    # the joint embedding (2 x 8 components) beside the evidence profile (3 modalities, misalignment)
    embedding, profile = inputs.features[:, :16], inputs.features[:, 16:]
    assert profile.shape == (300, 4) and embedding.var(axis=0).sum() == pytest.approx(1)
    assert profile.var(axis=0).sum() == pytest.approx(1)
    plain = rerank(config, None, None, "propagation", pd.DataFrame(columns=["object_id", "interest"]))
    assert list(plain.columns) == ["object_id", "score", "rank"] and plain["rank"].iloc[0] == 1
    assert plain.object_id.is_unique and len(plain) == 300
    order = np.argsort(-inputs.anomaly, kind="stable")
    np.testing.assert_array_equal(plain.object_id.to_numpy()[:20], inputs.object_ids[order][:20])
    # the top ten labelled dull, one ordinary object far down labelled 5: the rerank moves away from the top
    dull, gem = plain.object_id[:10], plain.object_id.iloc[-1]
    labels = pd.DataFrame({"object_id": [*dull, gem, 10**12], "interest": [0] * 10 + [5, 5]})
    for method in RERANKERS:
        moved = rerank_loaded(inputs, method, labels, seed=config.seed)
        assert set(moved.object_id[:10]) != set(dull), method
        assert moved.set_index("object_id").loc[gem, "rank"] < 300, method


def test_fmb_rerank_writes_what_rerank_gives(scored_run: Path, monkeypatch):
    config = run_config(scored_run)
    monkeypatch.chdir(scored_run)
    store = LabelStore(config.layout.app.labels_db)
    try:
        for rank, object_id in enumerate(load_inputs(config).object_ids[:6], start=1):
            store.add(int(object_id), rank % 6, ["lens"], user="ann", ranking="fused_cauchy", rank=rank)
        out = scored_run / "reranked.parquet"
        result = CliRunner().invoke(app, ["rerank", "--method", "gp_ei", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert "300 objects ranked by gp_ei from 6 labels (pixels, fused_cauchy)" in result.output
        expected = rerank(config, "pixels", "fused_cauchy", "gp_ei", store.current())
        pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
        default = CliRunner().invoke(app, ["rerank", "--at", "0"])  # before any label: the plain ranking
        assert default.exit_code == 0 and "from 0 labels" in default.output
        written = pd.read_parquet(config.layout.app.reranked("pixels-fused_cauchy-astronomaly"))
        assert written.object_id.tolist() == rerank(config, None, None, "propagation", store.current(0)).object_id.tolist()
    finally:
        store.close()
        config.layout.app.labels_db.unlink()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--method", "oracle"], "unknown re-ranker 'oracle': choose one of astronomaly, gp_ei, propagation"),
    (["--model", "aion"], "has no scores for model 'aion'"),
    (["--ranking", "object_id"], "'object_id' is not a score column"),
])
def test_fmb_rerank_refuses_bad_options_in_one_line(scored_run: Path, monkeypatch, arguments, message):
    monkeypatch.chdir(scored_run)
    result = CliRunner().invoke(app, ["rerank", *arguments])
    assert isinstance(result.exception, FmbError) and message in str(result.exception)

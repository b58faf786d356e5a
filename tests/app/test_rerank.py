"""The re-rankers on a planted survey and on a real scored run, the nearest-neighbour graph built once,
the random slice of every page, the discovery curve, and `fmb rerank` with what it records."""

import time

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import run_config
from typer.testing import CliRunner

from fmb.app import graph as graph_module
from fmb.app.graph import GraphCache, harmonic
from fmb.app.labels import LabelStore
from fmb.app.pages import DEFAULT_RANDOM_FRACTION, discovery_curve, page_count, page_positions
from fmb.app.rerank import load_inputs, ranking_name, read_reranked, rerank, rerank_loaded
from fmb.app.rerankers.active_search import ActiveSearch
from fmb.app.rerankers.propagation import LabelPropagation
from fmb.plugins import reranker_class, reranker_names
from fmb.cli import app
from fmb.detect.scores import DEFAULT_RANKING as HEADLINE, rank_descending
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


@pytest.mark.parametrize("method", reranker_names())
def test_labels_bring_the_interesting_clusters_neighbours_up(method: str):
    X, anomaly, labelled, interest, hidden = planted()
    assert np.isin(top_unlabelled(anomaly, labelled, HIDDEN), hidden).sum() == 0  # plain: B fills the top
    scores = reranker_class(method)(seed=0).fit(X, anomaly, labelled, interest).scores_
    assert scores.shape == anomaly.shape and np.isfinite(scores).all()
    assert np.isin(top_unlabelled(scores, labelled, HIDDEN), hidden).sum() > HIDDEN // 2  # from none


@pytest.mark.parametrize("method", [name for name in reranker_names() if name != "bandit"])  # its cold start mixes
def test_no_label_gives_the_anomaly_ranking(method: str):
    X, anomaly, *_ = planted()
    anomaly[[3, 4]] = anomaly[5]  # ties stay ties
    anomaly[7] = np.nan  # unranked: last
    scores = reranker_class(method)(seed=0).fit(X, anomaly, [], []).scores_
    finite = np.isfinite(anomaly)
    np.testing.assert_array_equal(rank_descending(scores)[finite], rank_descending(anomaly[finite]))
    assert rank_descending(scores)[7] == len(anomaly)


@pytest.mark.parametrize("method", reranker_names())
def test_each_reranker_is_deterministic_for_its_seed(method: str):
    X, anomaly, labelled, interest, _ = planted()
    first = reranker_class(method)(seed=3).fit(X, anomaly, labelled, interest).scores_
    np.testing.assert_array_equal(first, reranker_class(method)(seed=3).fit(X, anomaly, labelled, interest).scores_)


def test_bad_inputs_are_refused():
    X, anomaly, labelled, interest, _ = planted()
    with pytest.raises(FmbError, match="one interest per labelled object"):
        reranker_class("gp_ei")().fit(X, anomaly, labelled, interest[:3])
    with pytest.raises(FmbError, match="interest must lie in 0..5"):
        reranker_class("propagation")().fit(X, anomaly, labelled, interest + 1)
    with pytest.raises(FmbError, match="outside X"):
        reranker_class("astronomaly")().fit(X, anomaly, [600], [1])


# -- label propagation: its graph, its solver, its cold start ------------------------------------------
def test_the_graph_is_built_once_per_matrix_and_read_back_after_a_restart(tmp_path: Path, monkeypatch):
    X, anomaly, labelled, interest, _ = planted()
    built = []
    knn = graph_module.knn_graph
    monkeypatch.setattr(graph_module, "knn_graph", lambda Z, k: built.append(len(Z)) or knn(Z, k))
    locate = lambda key: tmp_path / f"g-{key}.npz"  # noqa: E731
    cache = GraphCache(locate)
    first = LabelPropagation(graphs=cache).fit(X, anomaly, labelled, interest).scores_
    again = LabelPropagation(graphs=cache).fit(X, anomaly, labelled[:4], interest[:4]).scores_
    assert built == [600] and len(list(tmp_path.glob("g-*.npz"))) == 1 and not np.array_equal(first, again)
    restarted = LabelPropagation(graphs=GraphCache(locate)).fit(X, anomaly, labelled, interest).scores_
    np.testing.assert_array_equal(restarted, first)  # read from the file, not built
    assert built == [600]
    np.testing.assert_array_equal(LabelPropagation().fit(X, anomaly, labelled, interest).scores_, first)
    assert built == [600, 600]  # no cache: built on every fit
    LabelPropagation(graphs=cache).fit(X[:500], anomaly[:500], labelled, interest)  # other features, other graph
    assert built == [600, 600, 500] and len(list(tmp_path.glob("g-*.npz"))) == 2
    for saved in tmp_path.glob("g-*.npz"):
        saved.write_bytes(b"damaged")
    rebuilt = LabelPropagation(graphs=GraphCache(locate)).fit(X, anomaly, labelled, interest).scores_
    np.testing.assert_array_equal(rebuilt, first)
    assert built == [600, 600, 500, 600]  # a damaged file is built again


def test_propagation_solves_the_harmonic_system_exactly():
    from scipy.sparse import diags
    from scipy.sparse.linalg import spsolve

    X, _, labelled, interest, _ = planted()
    graph = graph_module.knn_graph(X, 10)
    values = interest / 2.5 - 1
    free = np.setdiff1d(np.arange(len(X)), labelled)
    system = diags(np.asarray(graph[free].sum(axis=1)).ravel() + 1.0) - graph[free][:, free]
    direct = spsolve(system.tocsc(), graph[free][:, labelled] @ values)
    spread = harmonic(graph, labelled, values, 1.0)
    np.testing.assert_allclose(spread[free], direct, rtol=0, atol=1e-8)
    np.testing.assert_array_equal(spread[labelled], values)


def test_without_an_interesting_label_a_page_asks_each_neighbourhood_once():
    X, anomaly, labelled, interest, _ = planted()
    dull = labelled[interest == 0]
    graph = graph_module.knn_graph(graph_module.principal_components(X, 16, 0), 10)

    def neighbours_among_first(estimator, labelled, interest, count=10) -> int:
        scores = estimator.fit(X, anomaly, labelled, interest).scores_
        first = top_unlabelled(scores, labelled, count)
        return graph[first][:, first].nnz

    assert neighbours_among_first(LabelPropagation(diverse_cold_start=False), dull, np.zeros(5)) > 0  # the B cluster
    assert neighbours_among_first(LabelPropagation(), dull, np.zeros(5)) == 0
    # once something is interesting, its neighbours are what to show next
    with_gem = LabelPropagation().fit(X, anomaly, labelled, interest).scores_
    np.testing.assert_array_equal(with_gem, LabelPropagation(diverse_cold_start=False).fit(
        X, anomaly, labelled, interest).scores_)


# -- active search: its probability model and its pessimistic batch --------------------------------------
def planted_graph(X: np.ndarray):
    return graph_module.knn_graph(graph_module.principal_components(X, 16, 0), 10)


def test_active_search_is_the_knn_model_worked_by_hand():
    X, anomaly, labelled, interest, _ = planted()
    graph = planted_graph(X)
    found, counted = np.zeros(len(X)), np.zeros(len(X))
    found[labelled], counted[labelled] = interest / 5, 1
    prior = (len(X) - rank_descending(anomaly) + 1) / len(X)
    expected = (0.05 * prior + graph @ found) / (1 + graph @ counted)
    expected[labelled] = found[labelled]
    chance = ActiveSearch(simulated=0).fit(X, anomaly, labelled, interest).scores_
    np.testing.assert_allclose(chance, expected, rtol=1e-12)
    # a neighbour of an interesting object comes before every object with no labelled neighbour
    near_gem = (graph @ (found > 0) > 0) & (counted == 0)
    unexplored = (graph @ counted == 0) & (counted == 0)
    assert near_gem.any() and chance[near_gem].min() > chance[unexplored].max()
    # and a neighbour of dull objects only goes below unexplored objects of the same anomaly
    near_dull = (graph @ counted > 0) & (graph @ found == 0) & (counted == 0)
    np.testing.assert_allclose(chance[near_dull] * (1 + graph @ counted)[near_dull], 0.05 * prior[near_dull])


def test_active_search_takes_each_neighbourhood_once_in_its_first_objects():
    X, anomaly, labelled, interest, _ = planted()
    dull = labelled[interest == 0]
    graph = planted_graph(X)

    def neighbour_pairs_among_first(estimator, count=10) -> int:
        first = top_unlabelled(estimator.fit(X, anomaly, dull, np.zeros(5)).scores_, dull, count)
        return graph[first][:, first].nnz

    assert neighbour_pairs_among_first(ActiveSearch(simulated=0)) > 0  # the B cluster, unexplored parts of it
    assert neighbour_pairs_among_first(ActiveSearch()) == 0
    # past the simulated objects the list is the model's chance itself
    simulated = ActiveSearch(simulated=10).fit(X, anomaly, dull, np.zeros(5)).scores_
    plain = ActiveSearch(simulated=0).fit(X, anomaly, dull, np.zeros(5)).scores_
    rest = np.argsort(-simulated)[10:]
    np.testing.assert_array_equal(simulated[rest], plain[rest])


@pytest.mark.parametrize("count", [3, 40])
def test_the_pessimistic_order_queues_only_what_can_come_first(count: int):
    """`pessimistic_order` queues only the objects of highest chance; the order must be the one the
    whole list gives, as worked here one object at a time over every unlabelled object."""
    X, anomaly, labelled, interest, _ = planted()
    graph = planted_graph(X)
    queued_all = count * (np.diff(graph.indptr).max() + 1) + 1 >= len(X) - len(labelled)
    assert queued_all == (count == 40)  # 3: only the objects of highest chance are queued
    found, counted = np.zeros(len(X)), np.zeros(len(X))
    found[labelled], counted[labelled] = interest / 5, 1
    numerator = 0.05 * np.round(anomaly, 1) + graph @ found  # rounded: many ties, broken by position
    denominator = 1 + graph @ counted
    expected, current, free = [], numerator / denominator, np.ones(len(X), bool)
    free[labelled] = False
    for _ in range(count):
        node = int(np.flatnonzero(free)[np.argmax(current[free])])
        expected.append(node)
        free[node] = False
        neighbours = graph.indices[graph.indptr[node]:graph.indptr[node + 1]]
        denominator[neighbours] += 1
        current[neighbours] = numerator[neighbours] / denominator[neighbours]
    assert graph_module.pessimistic_order(numerator, 1 + graph @ counted, graph, labelled, count).tolist() == expected


# -- pages ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("size", "fraction", "drawn"), [(10, 0.1, 1), (10, 0.3, 3), (10, 0.01, 1), (7, 0.0, 0),
                                                         (1, 0.5, 0)])
def test_every_page_has_its_random_slice_drawn_from_below_it(size: int, fraction: float, drawn: int):
    count, ranked = 95, size - drawn
    pages = [page_positions(count, page, size, fraction, seed=1) for page in range(page_count(count, size, fraction))]
    assert len(pages) == -(-count // ranked)
    in_order = np.concatenate([positions[~random] for positions, random in pages])
    np.testing.assert_array_equal(in_order, np.arange(count))  # the ranking, in order, each object once
    for page, (positions, random) in enumerate(pages):
        end = min((page + 1) * ranked, count)
        assert random.sum() == min(drawn, count - end) and not random[:len(positions) - random.sum()].any()
        assert (positions[random] >= end).all() and len(set(positions)) == len(positions)  # from below the page
    again = page_positions(count, 4, size, fraction, seed=1)  # a page alone, as in the whole
    np.testing.assert_array_equal(again[0], pages[4][0])
    if drawn:
        others = [page_positions(count, page, size, fraction, seed=2)[0] for page in range(len(pages))]
        assert any(not np.array_equal(mine, other) for (mine, _), other in zip(pages, others))


def test_a_page_costs_the_same_however_long_the_list():
    started = time.perf_counter()
    positions, random = page_positions(10**12, 10**9, 10, DEFAULT_RANDOM_FRACTION, seed=0)
    assert time.perf_counter() - started < 1  # nothing of the list's length is made
    np.testing.assert_array_equal(positions[:9], 9 * 10**9 + np.arange(9))
    assert random.tolist() == [False] * 9 + [True] and positions[9] >= 9 * 10**9 + 9


def test_discovery_curve_by_hand():
    interest = {5: 4, 3: 1, 9: 5, 7: 3, 2: 4}
    np.testing.assert_array_equal(discovery_curve([5, 3, 9, 1, 7, 2], interest), [1, 1, 2, 2, 2, 3])
    np.testing.assert_array_equal(discovery_curve([5, 3, 9], pd.Series(interest), threshold=5), [0, 0, 1])
    assert len(discovery_curve([], interest)) == 0


# -- a real scored run ------------------------------------------------------------------------------
def test_a_runs_rerank_follows_its_labels(scored_run: Path):
    config = run_config(scored_run)
    inputs = load_inputs(config)
    assert inputs.model == "pixels" and inputs.ranking == HEADLINE and len(inputs.object_ids) == 300
    # the joint embedding (2 x 8 components) beside the evidence profile (image, spectrum, misalignment)
    embedding, profile = inputs.features[:, :16], inputs.features[:, 16:]
    assert profile.shape == (300, 3) and embedding.var(axis=0).sum() == pytest.approx(1)
    assert profile.var(axis=0).sum() == pytest.approx(1)
    plain = rerank(config, None, None, "propagation", pd.DataFrame(columns=["object_id", "interest"]))
    assert list(plain.columns) == ["object_id", "score", "rank"] and plain["rank"].iloc[0] == 1
    assert plain.object_id.is_unique and len(plain) == 300
    order = np.argsort(-inputs.anomaly, kind="stable")
    np.testing.assert_array_equal(plain.object_id.to_numpy()[:20], inputs.object_ids[order][:20])
    # the top ten labelled dull, one ordinary object far down labelled 5: the rerank moves away from the top
    dull, gem = plain.object_id[:10], plain.object_id.iloc[-1]
    labels = pd.DataFrame({"object_id": [*dull, gem, 10**12], "interest": [0] * 10 + [5, 5]})
    for method in reranker_names():
        moved = rerank_loaded(inputs, method, labels, seed=config.seed)
        assert set(moved.object_id[:10]) != set(dull), method
        if method != "astronomaly":  # whose score only scales anomaly scores down: the least anomalous stays last
            assert moved.set_index("object_id").loc[gem, "rank"] < 300, method


def test_fmb_rerank_writes_what_rerank_gives(scored_run: Path, monkeypatch):
    config = run_config(scored_run)
    monkeypatch.chdir(scored_run)
    store = LabelStore(config.layout.app.labels_db)
    try:
        for rank, object_id in enumerate(load_inputs(config).object_ids[:6], start=1):
            store.add(int(object_id), rank % 6, ["lens"], user="ann", ranking=HEADLINE, rank=rank)
        out = scored_run / "reranked.parquet"
        started = time.time()
        result = CliRunner().invoke(app, ["rerank", "--method", "gp_ei", "--out", str(out)])
        assert result.exit_code == 0, result.output
        assert f"300 objects ranked by gp_ei from 6 labels (pixels, {HEADLINE})" in result.output
        expected = rerank(config, "pixels", HEADLINE, "gp_ei", store.current())
        pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
        made = read_reranked(out)  # how it was made travels with it
        assert (made.method, made.model, made.ranking, made.labels, made.seed) == ("gp_ei", "pixels", HEADLINE, 6,
                                                                                  config.seed)
        assert made.event == store.events().id.max() and started <= made.time <= time.time()
        replay = scored_run / "replay.parquet"
        default = CliRunner().invoke(app, ["rerank", "--at", "0", "--out", str(replay)])  # before any label
        assert default.exit_code == 0 and "from 0 labels" in default.output
        cold = rerank(config, None, None, "bandit", store.current(0)).object_id.tolist()  # the default re-ranker's
        assert pd.read_parquet(replay).object_id.tolist() == cold and read_reranked(replay).event == 0
        # the app's own list is not a replay's to overwrite
        assert not config.layout.app.reranked(ranking_name("pixels", HEADLINE, "bandit")).exists()
        table = CliRunner().invoke(app, ["rerank", "--method", "gp_ei", "--out", str(scored_run / "reranked.csv")])
        assert table.exit_code == 0  # a .csv is a CSV, not Parquet under that name
        pd.testing.assert_frame_equal(pd.read_csv(scored_run / "reranked.csv"), expected, check_dtype=False)
    finally:
        store.close()
        config.layout.app.labels_db.unlink()


@pytest.mark.parametrize(("arguments", "message"), [
    (["--method", "oracle"], "unknown re-ranker 'oracle': choose one of astronomaly, gp_ei, propagation"),
    (["--model", "aion"], "has no scores for model 'aion'"),
    (["--ranking", "object_id"], "'object_id' is not a score column"),
    (["--at", "0"], "--at 0.0: a replay needs a finite unix time and --out"),  # it overwrote the app's list
    (["--at", "nan", "--out", "r.parquet"], "--at nan: a replay needs a finite unix time"),
    (["--out", "r.txt"], "--out r.txt: a re-ranked list is written as .parquet or .csv"),
])
def test_fmb_rerank_refuses_bad_options_in_one_line(scored_run: Path, monkeypatch, arguments, message):
    monkeypatch.chdir(scored_run)
    result = CliRunner().invoke(app, ["rerank", *arguments])
    assert isinstance(result.exception, FmbError) and message in str(result.exception)

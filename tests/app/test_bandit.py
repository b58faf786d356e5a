"""The bandit re-ranker: slots move toward the re-ranker whose picks are labelled interesting, its cold
start mixes the plain ranking with one object per neighbourhood, and a page of the app says which
re-ranker chose each object and credits it with the labels given there."""

from pathlib import Path

import numpy as np
import pytest
from conftest import run_config
from fastapi.testclient import TestClient
from test_rerank import planted

from fmb.app.graph import GraphCache, one_per_neighbourhood
from fmb.app.rerank import DEFAULT_METHOD, read_reranked, ranking_name
from fmb.app.rerankers.bandit import ARMS, DIVERSE, PLAIN, Bandit, block_shares
from fmb.app.server import create_app
from fmb.detect.scores import DEFAULT_RANKING as HEADLINE
from fmb.detect.scores import percentile
from fmb.errors import FmbError
from tests.app.live import private_copy

LOCAL = "http://127.0.0.1"


def first_choosers(bandit: Bandit, count: int) -> np.ndarray:
    return bandit.chosen_by_[np.argsort(-bandit.scores_, kind="stable")[:count]]


def test_each_slot_goes_to_an_arm_with_the_chance_that_it_is_the_best():
    draws = np.random.default_rng(0)
    blocks = [block_shares({"good": (21, 1), "bad": (1, 21), "new": (1, 1)}, 10, draws) for _ in range(200)]
    assert all(len(block) == 10 for block in blocks)
    counts = {arm: sum(block.count(arm) for block in blocks) / 2000 for arm in ("good", "bad", "new")}
    # P(new's draw > good's) = E[1 - good's draw] = 1 / 22 for Beta(1, 1) against Beta(21, 1); bad's ~ never
    assert counts["good"] == pytest.approx(21 / 22, abs=0.015)
    assert counts["new"] == pytest.approx(1 / 22, abs=0.015) and counts["bad"] < 0.002
    # with equal posteriors the slots are shared evenly
    even = [arm for _ in range(200) for arm in block_shares({"a": (3, 2), "b": (3, 2)}, 10, draws)]
    assert even.count("a") / len(even) == pytest.approx(0.5, abs=0.03)


def test_slots_move_toward_the_reranker_whose_picks_are_interesting():
    X, anomaly, labelled, interest, _ = planted()  # five of cluster A labelled 5, five of B labelled 0
    # a fake label history: active search chose the interesting five, propagation the dull five
    history = np.array(["active_search"] * 5 + ["propagation"] * 5, dtype=object)
    before, after = [], []
    for seed in range(5):
        naive = first_choosers(Bandit(seed=seed).fit(X, anomaly, labelled, interest), 100)
        taught = Bandit(seed=seed).fit(X, anomaly, labelled, interest, chosen_by=history)
        assert taught.posteriors_["active_search"] == (6, 1) and taught.posteriors_["propagation"] == (1, 6)
        before.append(naive == "active_search")
        after.append(first_choosers(taught, 100) == "active_search")
        assert (first_choosers(taught, 100) == "propagation").mean() < 0.15
    assert np.mean(after) > 0.4 and np.mean(after) > np.mean(before) + 0.15
    # the mirror history moves the slots the other way
    swapped = np.array(["propagation"] * 5 + ["active_search"] * 5, dtype=object)
    moved = first_choosers(Bandit(seed=0).fit(X, anomaly, labelled, interest, chosen_by=swapped), 100)
    assert (moved == "propagation").mean() > (moved == "active_search").mean()



def test_the_plain_ranking_stays_an_arm_and_wins_slots_when_its_picks_are_interesting():
    X, anomaly, labelled, interest, _ = planted()  # five of cluster A labelled 5, five of B labelled 0
    history = np.array(["plain"] * 5 + ["propagation"] * 5, dtype=object)  # plain chose the interesting five
    shares = []
    for seed in range(5):
        bandit = Bandit(seed=seed).fit(X, anomaly, labelled, interest, chosen_by=history)
        assert set(bandit.posteriors_) == {*ARMS, PLAIN} and bandit.posteriors_[PLAIN] == (6, 1)
        shares.append((first_choosers(bandit, 100) == PLAIN).mean())
    assert np.mean(shares) > 0.4

def test_a_labelled_object_keeps_its_chooser_and_the_list_is_reproducible():
    X, anomaly, labelled, interest, _ = planted()
    history = np.array(["gp_ei", "", None, "astronomaly", "gp_ei", *["propagation"] * 5], dtype=object)
    first = Bandit(seed=2).fit(X, anomaly, labelled, interest, chosen_by=history)
    again = Bandit(seed=2).fit(X, anomaly, labelled, interest, chosen_by=history)
    np.testing.assert_array_equal(first.scores_, again.scores_)
    assert list(first.chosen_by_[labelled]) == ["gp_ei", "", "", "astronomaly", "gp_ei", *["propagation"] * 5]
    assert first.posteriors_["gp_ei"] == (3, 1) and first.posteriors_["propagation"] == (1, 6)
    assert not set(np.argsort(-first.scores_)[:first.head]) & set(labelled)  # shown already: after the head
    with pytest.raises(FmbError, match="one chooser per labelled object"):
        Bandit().fit(X, anomaly, labelled, interest, chosen_by=history[:3])


def test_the_cold_start_mixes_the_plain_ranking_with_one_object_per_neighbourhood():
    X, anomaly, *_ = planted()  # cluster B (30 objects) fills the plain top 30
    graph = GraphCache(kept=0).graph(X, 16, 10, 0)
    cluster_b = np.arange(30, 60)
    for labelled, interest in (([], []), ([30, 31], [0, 1])):  # no label, then only dull ones
        bandit = Bandit(seed=0).fit(X, anomaly, labelled, interest)
        assert set(bandit.posteriors_) == {PLAIN, DIVERSE}
        order = np.argsort(-bandit.scores_, kind="stable")
        first_page, choosers = order[:10], bandit.chosen_by_[order[:10]]
        assert {PLAIN, DIVERSE} <= set(first_choosers(bandit, 30))
        diverse = order[:30][bandit.chosen_by_[order[:30]] == DIVERSE]
        assert len(diverse) >= 3
        for node in diverse:  # one per neighbourhood: no two diverse picks are neighbours
            assert not set(graph.indices[graph.indptr[node]:graph.indptr[node + 1]]) & set(diverse) - {node}
        # the plain first page is all cluster B; the bandit's first pages reach beyond it
        assert not np.isin(order[:30], cluster_b).all() and len(first_page) == len(choosers) == 10



def test_the_cold_starts_diverse_arm_moves_away_from_neighbourhoods_labelled_dull():
    """Ten of cluster B (the plain top 30) labelled dull, none interesting: the diverse arm's picks leave
    B, where one object per neighbourhood of the prior alone would still take B's first."""
    X, anomaly, *_ = planted()
    cluster_b = np.arange(30, 60)
    labelled, interest = cluster_b[:10], np.zeros(10)
    bandit = Bandit(seed=0).fit(X, anomaly, labelled, interest)
    assert set(bandit.posteriors_) == {PLAIN, DIVERSE}
    order = np.argsort(-bandit.scores_, kind="stable")[:30]
    diverse = order[bandit.chosen_by_[order] == DIVERSE]
    assert len(diverse) >= 5 and not np.isin(diverse, cluster_b).any()
    graph = GraphCache(kept=0).graph(X, 16, 10, 0)
    prior_only = one_per_neighbourhood(percentile(anomaly), graph, labelled)
    free = np.setdiff1d(np.arange(len(X)), labelled)
    assert np.isin(free[np.argsort(-prior_only[free], kind="stable")[:3]], cluster_b).all()

# -- the app ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def client(scored_run: Path, tmp_path_factory) -> tuple[TestClient, object]:
    project = private_copy(scored_run, tmp_path_factory.mktemp("bandit") / "project",
                           run_config(scored_run).layout.app.dir)
    config = run_config(project)
    return TestClient(create_app(config), base_url=LOCAL), config


def test_the_bandit_is_the_default_and_a_page_marks_who_chose_each_object(client):
    client, config = client
    assert DEFAULT_METHOD == "bandit" and client.get("/api/choices").json()["default_reranker"] == "bandit"
    cold = client.get("/api/list", params={"rerank": "bandit", "page_size": 20}).json()
    assert all(item["chosen_by"] for item in cold["items"])
    assert {item["chosen_by"] for item in cold["items"] if not item["random"]} <= {PLAIN, DIVERSE}
    assert [item["chosen_by"] for item in cold["items"] if item["random"]] == ["random"] * 2
    # label the first page: the diverse picks interesting, the plain ones dull; the refit credits each arm
    shown = [item for item in cold["items"] if not item["random"]]
    for item in shown:
        interest = 5 if item["chosen_by"] == DIVERSE else 0
        body = {"object_id": int(item["object_id"]), "interest": interest, "user": "bandit"}
        assert client.post("/api/labels", json=body).status_code == 201
    drawn = [int(item["object_id"]) for item in cold["items"] if item["random"]]
    for object_id in drawn:  # a label on the random slice rewards no arm
        assert client.post("/api/labels", json={"object_id": object_id, "interest": 5, "user": "bandit"}).status_code == 201
    assert client.post("/api/rerank", json={"method": "bandit"}).json()["labelled"] >= len(shown)
    saved = read_reranked(config.layout.app.reranked(ranking_name("pixels", HEADLINE, "bandit")))
    credited = saved.order.set_index("object_id").chosen_by
    assert [credited[int(item["object_id"])] for item in shown] == [item["chosen_by"] for item in shown]
    assert [credited[object_id] for object_id in drawn] == ["random"] * len(drawn)
    warm = client.get("/api/list", params={"rerank": "bandit", "page_size": 20}).json()
    arms = {item["chosen_by"] for item in warm["items"] if not item["random"]}
    # interest found: the re-rankers, beside the plain ranking (whose picks were labelled dull here)
    assert arms & {"propagation", "active_search", "astronomaly", "gp_ei"} and arms <= {*ARMS, PLAIN}
    plain_list = client.get("/api/list", params={"page_size": 20}).json()
    assert all(item["chosen_by"] is None for item in plain_list["items"])  # no bandit, no chooser

"""``bandit``: the other re-rankers compete for the slots of each page, by Thompson sampling (Thompson
1933; Chapelle & Li 2011). Each re-ranker (an arm) has a Beta posterior over the chance that an
object it chose is labelled interesting (interest >= `INTERESTING`): a uniform Beta(1, 1) prior, one
success for each of its picks labelled interesting and one failure for each labelled anything else
(picks not labelled, or drawn in the random slice, say nothing). For each slot a chance is drawn
afresh from every posterior and the slot goes to the arm of highest draw (batched Thompson sampling:
an arm gets a slot with the posterior probability that it is the best); each arm fills its slots with
its best unlabelled objects not taken yet, a block of `block` slots (one page of the app's labelling
loop) at a time. After the first `head` slots, the list follows the first arm (the app's former
default, propagation), labelled objects included.

Which arm chose an object is `chosen_by_`; the app keeps it with the list and hands it back at the
next refit (``chosen_by``), so that each label rewards the arm whose pick it was.

Once a label is interesting, the plain ranking stays an arm beside the re-rankers (its posterior
counting the labels of its cold-start picks): where no re-ranker beats it for this user, its slots
come back to it.

Cold start: while no label is interesting, the arms are the plain ranking and its most diverse top
(one object per neighbourhood of propagation's k-NN graph, `fmb.app.graph.one_per_neighbourhood`),
so that a class missing from the first page can still be met; the diverse arm reads the dull labels
as propagation does (each pushes its neighbourhood down, `propagation.propagated`), so that its
later pages move away from what was seen to be ordinary rather than walk down the plain top.
Seeded: the same labels and seed make the same list."""

from __future__ import annotations

import inspect

import numpy as np
import pandas as pd

from fmb.app.graph import GraphCache, one_per_neighbourhood
from fmb.app.labels import INTERESTING
from fmb.app.rerankers.base import GraphReranker, _checked
from fmb.app.rerankers.propagation import propagated
from fmb.detect.scores import percentile
from fmb.errors import FmbError
from fmb.plugins import reranker_class

ARMS = ("propagation", "active_search", "astronomaly", "gp_ei")
PLAIN, DIVERSE = "plain", "diverse"  # the cold start's arms


class Bandit(GraphReranker):
    """Thompson sampling over re-rankers for the slots of each block of `block` (see the module doc)."""

    summary = "the re-rankers compete for each page's slots: those whose picks you label interesting get more"

    def __init__(self, arms: tuple[str, ...] = ARMS, block: int = 10, head: int = 500, neighbours: int = 10,
                 components: int = 16, seed: int = 0, graphs: GraphCache | None = None):
        super().__init__(neighbours, components, seed, graphs)
        self.arms, self.block, self.head = tuple(arms), block, head

    def fit(self, X, anomaly, labelled_index, interest, chosen_by=None) -> "Bandit":
        """`chosen_by`: the arm that chose each labelled object (one name per label; None or "" where
        no arm did), from the list the label was given in."""
        X, anomaly, labelled, interest = _checked(X, anomaly, labelled_index, interest)
        credit = np.asarray([""] * len(labelled) if chosen_by is None else chosen_by, dtype=object)
        if credit.shape != labelled.shape:
            raise FmbError(f"the bandit needs one chooser per labelled object, got {credit.shape} for {labelled.shape}")
        credit = np.where(pd.isna(credit), "", credit)
        orders = self._arm_scores(X, anomaly, labelled, interest)
        draws = np.random.default_rng([self.seed, len(labelled)])
        posteriors = {arm: (1 + int(np.sum((credit == arm) & (interest >= INTERESTING))),
                            1 + int(np.sum((credit == arm) & (interest < INTERESTING)))) for arm in orders}
        self.posteriors_ = posteriors
        order, chosen = self._merged(orders, posteriors, labelled, credit, draws)
        self.scores_ = np.empty(len(X))
        self.scores_[order] = np.arange(len(X), 0, -1, dtype=np.float64)
        self.chosen_by_ = np.empty(len(X), dtype=object)
        self.chosen_by_[order] = chosen
        return self

    def _arm_scores(self, X, anomaly, labelled, interest) -> dict[str, np.ndarray]:
        prior = percentile(anomaly)
        if not (interest >= INTERESTING).any():  # the cold start
            graph = self._graph(X)
            return {PLAIN: prior, DIVERSE: one_per_neighbourhood(propagated(graph, prior, labelled, interest), graph,
                                                                 labelled)}
        scores = {}
        for arm in self.arms:
            kind = reranker_class(arm)
            keywords = {"graphs": self.graphs} if "graphs" in inspect.signature(kind).parameters else {}
            scores[arm] = kind(seed=self.seed, **keywords).fit(X, anomaly, labelled, interest).scores_
        scores[PLAIN] = prior  # last: the list's tail follows the first arm
        return scores

    def _merged(self, scores: dict[str, np.ndarray], posteriors: dict, labelled: np.ndarray, credit: np.ndarray,
                draws: np.random.Generator) -> tuple[np.ndarray, list[str]]:
        """The list's positions in order and the arm that chose each: blocks shared by posterior draws,
        then the rest in the first arm's order, each labelled object with the arm it was credited to."""
        count = len(next(iter(scores.values())))
        taken = np.zeros(count, bool)
        taken[labelled] = True
        orders = {arm: np.argsort(-values, kind="stable") for arm, values in scores.items()}
        cursors = dict.fromkeys(orders, 0)
        order, chosen = [], []
        while len(order) < min(self.head, count - len(labelled)):
            for arm in block_shares(posteriors, self.block, draws):
                while taken[orders[arm][cursors[arm]]]:
                    cursors[arm] += 1
                taken[orders[arm][cursors[arm]]] = True
                order.append(orders[arm][cursors[arm]])
                chosen.append(arm)
                if len(order) == min(self.head, count - len(labelled)):
                    break
        first = next(iter(orders))
        rest = orders[first][~np.isin(orders[first], order)]  # the labelled objects among them
        arms = dict(zip(labelled.tolist(), credit))
        return np.concatenate([order, rest]).astype(np.int64), chosen + [arms.get(position, first) for position in rest]


def block_shares(posteriors: dict[str, tuple[float, float]], block: int, draws: np.random.Generator) -> list[str]:
    """One block's slots, in order: for each slot a chance drawn afresh from every arm's Beta posterior
    and the slot to the arm of highest draw: batched Thompson sampling (Kandasamy et al. 2018), each
    slot going to an arm with the posterior probability that it is the best one."""
    arms = list(posteriors)
    successes, failures = np.array([posteriors[arm] for arm in arms], dtype=np.float64).T
    chances = draws.beta(successes, failures, size=(block, len(arms)))
    return [arms[index] for index in chances.argmax(1)]

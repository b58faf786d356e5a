"""``active_search``: the k-NN probability model of active search (Garnett et al. 2012; Jiang et al.
2017), the task of finding as many of a class as possible within a budget of looks, which is what a
labelling session is: an object's chance of being interesting is the interest of its labelled
neighbours on propagation's graph (as a fraction of the scale) plus a prior pseudo-count, over their
number plus one. The prior is 0.05 (the pseudo-count their code gives two of its datasets) times the
anomaly percentile, so that unexplored objects come in anomaly order, and below any neighbour of an
interesting object. Unlike propagation, an unlabelled neighbour is no evidence: it does not dilute
what the labelled ones say. The first 100 objects of the list are chosen as sequential simulation
builds a batch (Jiang et al. 2018): each assumed dull once chosen, so its neighbours wait."""

from __future__ import annotations

import numpy as np

from fmb.app.graph import GraphCache, pessimistic_order
from fmb.app.labels import MAX_INTEREST
from fmb.app.rerankers.base import GraphReranker
class ActiveSearch(GraphReranker):
    """The k-NN probability model of active search (see the module doc): the chance that an object is
    interesting, (prior_rate x anomaly percentile + the interest of its labelled neighbours) over (1 +
    how many they are), interest read as a fraction of the scale; the first `simulated` objects are
    chosen one at a time, each assumed dull once chosen (`pessimistic_order`)."""

    summary = "active search's k-NN model: neighbours of interesting objects first, each neighbourhood once"

    def __init__(self, neighbours: int = 10, components: int = 16, prior_rate: float = 0.05, simulated: int = 100,
                 seed: int = 0, graphs: GraphCache | None = None):
        super().__init__(neighbours, components, seed, graphs)
        self.prior_rate, self.simulated = prior_rate, simulated

    def _scores(self, X, anomaly, prior, labelled, interest):
        graph = self._graph(X)
        found, counted = np.zeros(len(X)), np.zeros(len(X))
        found[labelled], counted[labelled] = interest / MAX_INTEREST, 1.0
        pseudo = self.prior_rate * prior  # the prior's pseudo-count of interest, out of a pseudo-count of 1
        numerator, denominator = pseudo + graph @ found, 1 + graph @ counted
        chance = numerator / denominator
        chance[labelled] = found[labelled]
        first = pessimistic_order(numerator, denominator, graph, labelled, self.simulated)
        chance[first] = chance.max() + 1 + np.arange(len(first), 0, -1)  # first to last, above every other
        return chance

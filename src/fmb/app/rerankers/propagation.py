"""``propagation``: label propagation over the k-nearest-neighbour graph (k = 10, `fmb.app.graph`), as
the harmonic function of Zhu, Ghahramani & Lafferty (2003) with a "dongle" of weight 1 holding each
unlabelled object to 0: interest (centred, -1..1) spreads from labelled objects to their neighbours
and fades with distance; the score is the anomaly percentile plus it. Until some label is above the
middle of the scale (the cold start: labels can only push objects down), the list first shows one
object per neighbourhood (a greedy independent set of the graph, best first): the label of one
object says what its neighbours are, so a page of neighbours asks one question many times.

The bandit's first arm (`fmb.app.rerankers.bandit`): after its head, the bandit's list follows it."""

from __future__ import annotations

import numpy as np

from fmb.app.graph import GraphCache, harmonic, one_per_neighbourhood
from fmb.app.labels import MAX_INTEREST
from fmb.app.rerankers.base import GraphReranker
class LabelPropagation(GraphReranker):
    """Harmonic label propagation over the k-NN graph, added to the anomaly percentile, one object per
    neighbourhood first while no label is interesting (`diverse_cold_start`; see the module doc)."""

    summary = "label propagation over the nearest-neighbour graph: interest spreads to similar objects"

    def __init__(self, neighbours: int = 10, prior_weight: float = 1.0, components: int = 16, seed: int = 0,
                 graphs: GraphCache | None = None, diverse_cold_start: bool = True):
        super().__init__(neighbours, components, seed, graphs)
        self.prior_weight, self.diverse_cold_start = prior_weight, diverse_cold_start

    def _scores(self, X, anomaly, prior, labelled, interest):
        graph = self._graph(X)
        scores = propagated(graph, prior, labelled, interest, self.prior_weight)
        if self.diverse_cold_start and not (interest > MAX_INTEREST / 2).any():
            scores = one_per_neighbourhood(scores, graph, labelled)
        return scores


def propagated(graph, prior: np.ndarray, labelled: np.ndarray, interest: np.ndarray,
               prior_weight: float = 1.0) -> np.ndarray:
    """The anomaly percentile `prior` plus the interest (centred, -1..1) of the labelled objects
    spread over the graph (`harmonic`); the prior alone without labels."""
    if not len(labelled):
        return prior
    centred = (interest - MAX_INTEREST / 2) / (MAX_INTEREST / 2)
    return prior + harmonic(graph, labelled, centred, prior_weight)

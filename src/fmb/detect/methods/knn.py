"""k nearest neighbours (PyOD): distance to the neighbours of the fit sample."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fmb.detect.methods._pyod import PyODBaseline


class KNNDetector(PyODBaseline):
    """k nearest neighbours (PyOD): score = distance to the fit sample's nearest neighbours."""

    name = "knn"

    def __init__(
        self,
        *,
        n_neighbors: Annotated[int, Field(ge=1, description="neighbours whose distances make the score")] = 10,
        method: Annotated[Literal["mean", "largest", "median"], Field(
            description="distance to the k-th neighbour (largest), or the mean or median over the k")] = "mean",
        seed: int = 0,
    ):
        self.n_neighbors, self.method, self.seed = n_neighbors, method, seed

    def _model(self):
        from pyod.models.knn import KNN

        return KNN(n_neighbors=self.n_neighbors, method=self.method)

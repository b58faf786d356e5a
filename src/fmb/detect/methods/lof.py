"""Local Outlier Factor (PyOD): density relative to that of an object's neighbours."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from fmb.detect.methods._pyod import PyODBaseline


class LOFDetector(PyODBaseline):
    """Local Outlier Factor (PyOD): score = local density of the neighbours over the object's own."""

    name = "lof"

    def __init__(self, *, n_neighbors: Annotated[int, Field(ge=1, description="neighbours defining the local "
                                                                 "density")] = 20, seed: int = 0):
        self.n_neighbors, self.seed = n_neighbors, seed

    def _model(self):
        from pyod.models.lof import LOF

        return LOF(n_neighbors=self.n_neighbors)

"""Isolation Forest (PyOD): objects isolated by few random axis-aligned splits are anomalous."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from fmb.detect.methods._pyod import PyODBaseline


class IForestDetector(PyODBaseline):
    """Isolation Forest (PyOD): score = how few random splits isolate an object."""

    name = "iforest"

    def __init__(
        self,
        *,
        n_estimators: Annotated[int, Field(ge=1, description="trees in the forest")] = 200,
        max_samples: Annotated[int | float | Literal["auto"], Field(
            description="objects drawn per tree: a count, a fraction of the fit sample, or 'auto' (min(256, n))")] = "auto",
        seed: int = 0,
    ):
        self.n_estimators, self.max_samples, self.seed = n_estimators, max_samples, seed

    def _model(self):
        from pyod.models.iforest import IForest

        return IForest(n_estimators=self.n_estimators, max_samples=self.max_samples, random_state=self.seed, n_jobs=1)

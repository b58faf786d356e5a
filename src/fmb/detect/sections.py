"""The hyper-parameters of every detector (``detect.<name>``) and of the mismatch critic
(``detect.mismatch``), importable without torch, PyOD or scikit-learn.

Loading a configuration builds its schema from these classes alone (`fmb.plugins.DETECTOR_SECTIONS`
names them). Each detector points at its section (`Detector.section`) and takes its fields as
keyword arguments, validated and defaulted by it (`fmb.detect.base.Detector`), so a parameter's
type, limits, default and description are written once, here.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from fmb.config import Section


class FlowSection(Section):
    """A masked autoregressive flow (zuko) trained by maximum likelihood; score = NLL."""

    transforms: int = Field(5, ge=1, description="MAF transforms")
    hidden: int = Field(128, ge=8, description="hidden units per layer of each transform")
    epochs: int = Field(30, ge=1, description="passes over the fit data, counted in steps within [min_steps, max_steps]")
    batch_size: int = Field(512, ge=16, description="objects per optimiser step")
    lr: float = Field(1e-3, gt=0, description="peak learning rate (Adam, cosine decay)")
    patience: int = Field(4, ge=1, description="held-out checks without improvement before stopping")
    min_steps: int = Field(800, ge=1, description="optimiser steps per flow at least")
    max_steps: int = Field(2000, ge=1, description="optimiser steps per flow at most")
    check_every: int = Field(100, ge=1, description="steps between held-out checks")


class IForestSection(Section):
    """Isolation Forest (PyOD): score = how few random splits isolate an object."""

    n_estimators: int = Field(200, ge=1, description="trees in the forest")
    max_samples: int | float | Literal["auto"] = Field(
        "auto", description="objects drawn per tree: a count, a fraction of the fit sample, or 'auto' (min(256, n))")


class LOFSection(Section):
    """Local Outlier Factor: score = local density of the neighbours over the object's own."""

    n_neighbors: int = Field(20, ge=1, description="neighbours defining the local density")


class KNNSection(Section):
    """k nearest neighbours: score = distance to the fit sample's nearest neighbours."""

    n_neighbors: int = Field(10, ge=1, description="neighbours whose distances make the score")
    method: Literal["mean", "largest", "median"] = Field(
        "mean", description="distance to the k-th neighbour (largest), or the mean or median over the k")


class ECODSection(Section):
    """ECOD: score = the summed negative log tail probabilities (no hyper-parameters)."""


class MismatchSection(Section):
    """The contrastive image-spectrum critic behind the `mismatch` score."""

    hidden: int = Field(128, ge=8, description="hidden units of each modality's tower")
    dim: int = Field(64, ge=2, description="dimension of the shared space")
    epochs: int = Field(40, ge=1, description="passes over the fit data, counted in steps within [min_steps, max_steps]")
    min_steps: int = Field(300, ge=1, description="optimiser steps at least")
    max_steps: int = Field(3000, ge=1, description="optimiser steps at most")
    batch_size: int = Field(256, ge=8, description="pairs per step: each is contrasted with the others in its batch")
    lr: float = Field(1e-3, gt=0, description="learning rate (AdamW)")
    references: int = Field(4096, ge=16, description="fit objects kept to estimate the marginals when scoring")
    check_every: int = Field(50, ge=1, description="steps between checks of the held-out (10 %) contrastive loss")
    patience: int = Field(5, ge=1, description="checks without improvement before training stops (best state kept)")

"""A toy encoder added to fmb the way a new model is: this one file plus one registry line
(`fmb.plugins.register_encoder("toy", "tests.e2e.toy_encoder:ToyEncoder")`)."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from pydantic import Field

from fmb.config import ModelSection
from fmb.models.base import Encoder, Preprocessor
from fmb.models.inputs import bands_batch, object_ids, spectrum_batch


class ToySection(ModelSection):
    width: int = Field(3, ge=1, description="embedding dimensions per modality")


class ToyPreprocessor(Preprocessor):
    model = "toy"
    needs = frozenset({"bands", "spectrum"})

    def __call__(self, samples) -> dict[str, torch.Tensor]:
        return {"object_id": object_ids(samples), "bands": bands_batch(samples, self.image_size),
                "flux": spectrum_batch(samples)["flux"]}


class ToyEncoder(Encoder):
    """Band means and spectrum quantiles, scaled by one fitted number (its adaptation)."""

    name = "toy"
    label = "toy model"
    aligned = False
    section = ToySection

    def __init__(self, settings: ToySection):
        super().__init__()
        self.settings = settings
        self.preprocessor = ToyPreprocessor(8)
        self.scale = torch.nn.Parameter(torch.ones(()))

    @classmethod
    def load(cls, settings: ToySection) -> "ToyEncoder":
        return cls(settings)

    def adapt(self, run) -> dict:
        """Its own adaptation: the scale that gives the sampled band means unit spread."""
        batch = run.sample(64)
        with torch.no_grad():
            self.scale.fill_(float(1.0 / batch["bands"].mean((2, 3)).std().clamp_min(1e-6)))
        run.save_adapted()
        return {"scale": float(self.scale.detach())}

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        width = self.settings.width
        image = batch["bands"].mean((2, 3)).repeat(1, width)[:, :width] * self.scale
        quantiles = torch.linspace(0.1, 0.9, width)
        spectrum = torch.quantile(batch["flux"], quantiles, dim=1).T * self.scale
        return {"image": image, "spectrum": spectrum, "joint": torch.cat([image, spectrum], 1)}

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError("the toy encoder adapts itself without training")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [self.scale]

    def describe(self) -> dict:
        width = self.settings.width
        return {"model": "toy", "weights": "none", "preprocessing": "band means, spectrum quantiles",
                "pooling": "none", "layer": "n/a", "dims": {"image": width, "spectrum": width, "joint": 2 * width}}

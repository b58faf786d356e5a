"""Encoders by name (the registry is `fmb.plugins.ENCODERS`), built with this run's weights."""

from __future__ import annotations

from fmb.config import ResolvedConfig
from fmb.errors import FmbError
from fmb.io import read_torch
from fmb.models.base import Encoder, WeightsError
from fmb.plugins import encoder_class


def build_encoder(config: ResolvedConfig, name: str, weights: str = "adapted") -> Encoder:
    """The encoder with its base weights, plus the adapted weights of this run when asked and present."""
    cls = encoder_class(name)
    encoder = cls.load(config.section(f"models.{name}"))
    adapted = config.layout.model(name).best
    encoder.adapted_from = None  # recorded in the embedding manifest: which weights made the vectors
    if weights == "adapted" and adapted.is_file():
        try:
            encoder.load_adapted_state(read_torch(adapted, f"adapted {name} weights")["model"])
        except WeightsError as error:  # adapted by another version of the model's code, or other settings
            raise WeightsError(f"{error}; adapt them again: `fmb adapt {name} --force`") from error
        encoder.adapted_from = str(adapted)
    elif weights == "adapted" and cls.requires_adaptation:
        raise FmbError(f"{name} has no adapted weights in {adapted.parent}; run `fmb adapt {name}` first")
    return encoder


def model_label(name: str) -> str:
    """How figures and the report name a model (its encoder's `label`)."""
    return getattr(encoder_class(name), "label", name)

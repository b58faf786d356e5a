"""Model names -> encoder classes, and where adapted weights live (runs/<name>/models/<model>/)."""

from __future__ import annotations

import importlib
from pathlib import Path

import torch

from fmb.config import ResolvedConfig
from fmb.errors import ConfigError, FmbError
from fmb.models.base import Encoder
from fmb.models.trainer import BEST

#: model name -> "module:class" (imported lazily: each model pulls its own heavy package)
ENCODERS = {
    "pixels": "fmb.models.pixels:PixelsEncoder",
    "astropt": "fmb.models.astropt:AstroPTEncoder",
    "aion": "fmb.models.aion:AionEncoder",
    "astroclip": "fmb.models.astroclip:AstroCLIPEncoder",
}


def model_names() -> list[str]:
    return list(ENCODERS)


def adapted_dir(config: ResolvedConfig, name: str) -> Path:
    return config.run_dir / "models" / name


def build_encoder(config: ResolvedConfig, name: str, weights: str = "adapted") -> Encoder:
    """The encoder with its base weights, plus the adapted weights of this run when asked and present."""
    if name not in ENCODERS:
        raise ConfigError(f"unknown model {name!r}; choose from {', '.join(ENCODERS)}")
    module_name, class_name = ENCODERS[name].split(":")
    encoder_class = getattr(importlib.import_module(module_name), class_name)
    encoder = encoder_class.load(getattr(config.models, name))
    adapted = adapted_dir(config, name) / BEST
    encoder.adapted_from = None  # recorded in the embedding manifest: which weights made the vectors
    if weights == "adapted" and adapted.is_file():
        encoder.load_adapted_state(torch.load(adapted, map_location="cpu", weights_only=False)["model"])
        encoder.adapted_from = str(adapted)
    elif weights == "adapted" and encoder_class.requires_adaptation:
        raise FmbError(f"{name} has no adapted weights in {adapted.parent}; run `fmb adapt {name}` first")
    return encoder

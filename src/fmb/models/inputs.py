"""Turning checked samples into model tensors: shared by every model's preprocessor."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from fmb.data.validate import Sample


def rgb_batch(samples: list[Sample], size: int) -> torch.Tensor:
    """(B, 3, size, size) float in [0, 1]: each RGB composite bilinearly resized (antialiased)."""
    images = []
    for sample in samples:
        x = torch.from_numpy(np.array(sample.rgb, copy=True)).permute(2, 0, 1).float()[None] / 255.0
        images.append(F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0])
    return torch.stack(images).clamp_(0, 1)


def bands_batch(samples: list[Sample], size: int) -> torch.Tensor:
    """(B, 4, size, size) float: VIS/Y/J/H in ADU, bilinearly resized."""
    images = [F.interpolate(torch.from_numpy(s.bands)[None].float(), size=(size, size), mode="bilinear",
                            align_corners=False, antialias=True)[0] for s in samples]
    return torch.stack(images)


def spectrum_batch(samples: list[Sample]) -> dict[str, torch.Tensor]:
    """flux, ivar, wavelength (B, L) float32 and mask (B, L) bool; masked flux is 0."""
    return {
        "flux": torch.from_numpy(np.stack([s.spectrum.flux for s in samples])).float(),
        "ivar": torch.from_numpy(np.stack([s.spectrum.ivar for s in samples])).float(),
        "wavelength": torch.from_numpy(np.stack([s.spectrum.wavelength for s in samples])).float(),
        "mask": torch.from_numpy(np.stack([s.spectrum.mask for s in samples])),
    }


def object_ids(samples: list[Sample]) -> torch.Tensor:
    return torch.tensor([s.object_id for s in samples], dtype=torch.int64)

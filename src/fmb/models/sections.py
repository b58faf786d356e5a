"""The config section of every encoder (``models.<name>``), importable without torch.

Loading a configuration builds its schema from these classes alone (`fmb.plugins.ENCODER_SECTIONS`
names them), so `fmb config show` or `fmb --help` never imports a model's code; each encoder
points at its own section here (`Encoder.section`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fmb.config import AdaptSettings, ModelSection


class PixelsSection(ModelSection):
    image_size: int = Field(32, ge=8, description="bands resized to this before PCA")
    components: int = Field(64, ge=6, description="dimensions per modality: PCA components, then log fluxes "
                            "(4 for the image bands, 1 for the spectrum)")
    fit_objects: int = Field(5000, ge=10, description="objects sampled to fit the PCA")


class PhysicalSection(ModelSection):
    fit_objects: int = Field(5000, ge=10, description="objects sampled to fit the robust standardisation")


class AionInputs(ModelSection):
    """What both AION routes share: how the Euclid bands are prepared."""

    image_size: int = Field(96, ge=96, description="Euclid bands are resized to this (the codec crops 96)")
    max_abs: float = Field(100.0, gt=0, description="clamp of the nanomaggy fluxes")


class AionSection(AionInputs):
    adapter_hidden: int = Field(16, ge=4, description="width of the Euclid<->HSC U-Net adapters")
    codec_grad: Literal["ste", "full"] = Field("ste", description="straight-through or full codec gradient")


class AionCodecSection(AionInputs):
    codec_train: Literal["all", "bands"] = Field(
        "all", description="what adapts: the codec's whole encoder and decoder, or only its band maps and "
        "quantisation projections (the quantiser never)")
    adapt: AdaptSettings = AdaptSettings(lr=1e-5, weight_decay=0.0)  # fine-tuning a pretrained codec


class AstroPTSection(ModelSection):
    image_size: int = Field(224, ge=16, multiple_of=16, description="RGB resized to this (multiple of the 16 px patch)")
    layer: Literal["middle", "last"] = Field("middle", description="read embeddings after the middle block or ln_f")
    adapt: AdaptSettings = AdaptSettings(lr=3e-5, batch_size=8, grad_accum=4)


class AstroCLIPSection(ModelSection):
    image_size: int = Field(144, description="AstroDINO input size")
    learnable_scale: bool = Field(True, description="learn the CLIP temperature (as exp of its log)")
    finetune_spectrum: bool = Field(True, description="also adapt the spectrum head")
    finetune_backbone: Literal["none", "spectrum", "both"] = Field(
        "none", description="backbones adapted beyond the heads: none, SpecFormer (spectrum), or SpecFormer and "
        "AstroDINO (both)")
    adapt: AdaptSettings = AdaptSettings(lr=3e-5, batch_size=64, weight_decay=0.05)

    @model_validator(mode="after")
    def _spectrum_head_with_its_backbone(self) -> "AstroCLIPSection":
        if self.finetune_backbone != "none" and not self.finetune_spectrum:
            raise ValueError(f"finetune_backbone={self.finetune_backbone} adapts SpecFormer under a frozen spectrum "
                             "head; set finetune_spectrum=true or finetune_backbone=none")
        return self

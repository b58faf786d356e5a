"""AION-1 with its image codec retrained on the four Euclid bands: model name ``aion_codec``.

The route of the original's ``retrain_euclid_codec.py``, without its monkey-patching: instead of
translating Euclid to HSC (``aion``), the codec reads and writes VIS/Y/J/H itself.

The package's image codec maps up to nine known survey bands (HSC grizy, DES griz: a module-level
table that has no Euclid) into its network through one linear map and back. `EuclidImageCodec` wraps
one codec instance with two new band maps for the four Euclid bands, initialised as the codec's own
HSC maps composed with the adapters' nearest-wavelength band mix (so the untrained route already
passes Euclid through the pretrained HSC path), around the codec's MagViT encoder, pre-quantisation
projection, FSQ quantiser, post-quantisation projection and decoder. Euclid nanomaggies enter as
they are: the HSC path's zero-point rescale (27 -> 22.5) exists to reach nanomaggies.

Adaptation (the shared trainer, `models.aion_codec.adapt`) fine-tunes the encoder and the decoder
(``codec_train: all``; ``bands``: only the band maps and the two quantisation projections, the
original's choice) on the same loss as the adapter route. The quantiser is never trained: FSQ has no
parameters (its levels are a buffer), so every token stays one of the 4375 codes the frozen AION
transformer has embeddings for, fed under the same token key as the adapter route. What a code
*means* to the transformer moves as the encoder is retrained; ``bands`` moves it least.

`route_losses` computes the reconstruction loss of both routes on the same validation objects.
"""

from __future__ import annotations


import numpy as np
import torch


from fmb.config import ResolvedConfig
from fmb.data.index import read_index_table
from fmb.data.loader import BatchStream, is_validation, plan_units
from fmb.data.sources import open_source
from fmb.errors import FmbError
from fmb.models.aion import EUCLID_TO_HSC, HSC_TO_EUCLID, HSC_BANDS, AionRoute, codec_crop
from fmb.models.base import pick_device
from fmb.models.registry import build_encoder
from fmb.models.sections import AionCodecSection

ROUTES = {"adapter": "aion", "codec": "aion_codec"}  # route -> model name


class EuclidImageCodec(torch.nn.Module):
    """A pretrained AION image codec reading and writing Euclid VIS/Y/J/H (nanomaggies)."""

    def __init__(self, codec):
        super().__init__()
        from aion.codecs.preprocessing.band_to_index import BAND_TO_INDEX

        self.codec = codec
        hsc = [BAND_TO_INDEX[band] for band in HSC_BANDS]
        source_in, source_out = codec.subsample_in, codec.subsample_out  # (proj, 9) and (9, proj) band maps
        projection = source_in.weight.shape[0]
        self.bands_in = torch.nn.Conv2d(EUCLID_TO_HSC.shape[1], projection, 1)
        self.bands_out = torch.nn.Conv2d(projection, HSC_TO_EUCLID.shape[0], 1)
        scale = (source_in.dim_in / len(hsc)) ** 0.5  # the package's rescaling when 5 of its 9 bands are present
        with torch.no_grad():
            self.bands_in.weight.copy_((scale * source_in.weight[:, hsc] @ EUCLID_TO_HSC)[:, :, None, None])
            self.bands_in.bias.copy_(scale * source_in.bias)
            self.bands_out.weight.copy_((HSC_TO_EUCLID @ source_out.weight[hsc])[:, :, None, None])
            self.bands_out.bias.copy_(HSC_TO_EUCLID @ source_out.bias[hsc])

    @property
    def quantizer(self):
        return self.codec.quantizer

    def trainable(self, what: str) -> dict[str, torch.nn.Module]:
        """The modules `codec_train` adapts (by their names in this module's state)."""
        modules = {"bands_in": self.bands_in, "bands_out": self.bands_out,
                   "codec.pre_quant_proj": self.codec.pre_quant_proj, "codec.post_quant_proj": self.codec.post_quant_proj}
        return modules | ({"codec.model": self.codec.model} if what == "all" else {})

    def latent(self, euclid: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) -> the continuous latent (B, C, 24, 24) of the central 96 px, before quantisation."""
        x = self.codec._range_compress(codec_crop(euclid).float())
        return self.codec.pre_quant_proj(self.codec.model.encode(self.bands_in(x)))

    def decode(self, quantised: torch.Tensor) -> torch.Tensor:
        """Quantised latent (B, C, 24, 24) -> Euclid nanomaggies (B, 4, 96, 96)."""
        x = self.bands_out(self.codec.model.decode(self.codec.post_quant_proj(quantised)))
        # bounded at ~1e10 nanomaggies so that a wild decoder early in training cannot overflow the loss
        return self.codec._reverse_range_compress(x.clamp(-3.0, 3.0))

    def encode(self, euclid: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) -> (B, 576) integer codes, as the package's `ImageCodec.encode` returns them."""
        with torch.autocast(euclid.device.type, enabled=False):  # quantisation stays in fp32
            return self.quantizer.encode(self.latent(euclid).flatten(2))

    def tokens_to_euclid(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode codes (B, 576) back to Euclid bands (what the transformer's image tokens hold)."""
        with torch.autocast(tokens.device.type, enabled=False):
            latent = self.quantizer.decode(tokens)
            side = int(round(latent.shape[-1] ** 0.5))
            return self.decode(latent.reshape(*latent.shape[:2], side, side))

    def forward(self, euclid: torch.Tensor) -> torch.Tensor:
        """The round trip through the quantiser (FSQ rounds with a straight-through gradient)."""
        with torch.autocast(euclid.device.type, enabled=False):
            return self.decode(self.quantizer.quantize(self.latent(euclid)))


class AionCodecEncoder(AionRoute):
    """The native route: the Euclid bands through the retrained image codec, tokens to frozen AION."""

    name = "aion_codec"
    label = "AION-1 (Euclid codec)"
    section = AionCodecSection

    def _build_route(self) -> str:
        self.euclid_codec = EuclidImageCodec(self.image_codec)
        for module in self._trainable().values():
            module.requires_grad_(True)
        return f"AION image codec on VIS/Y/J/H (band maps from HSC; codec_train {self.settings.codec_train})"

    def _trainable(self) -> dict[str, torch.nn.Module]:
        return self.euclid_codec.trainable(self.settings.codec_train)

    def frozen_modules(self) -> tuple[torch.nn.Module, ...]:
        return self.aion, self.spectrum_codec

    def image_tokens(self, euclid: torch.Tensor) -> torch.Tensor:
        return self.euclid_codec.encode(euclid)

    def reconstruct(self, euclid: torch.Tensor) -> torch.Tensor:
        return self.euclid_codec(euclid)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [p for module in self._trainable().values() for p in module.parameters()]

    def adapted_modules(self) -> dict[str, torch.nn.Module]:
        return {f"euclid_codec.{name}": module for name, module in self._trainable().items()}


def route_losses(config: ResolvedConfig, weights: str = "adapted", max_objects: int | None = None) -> dict[str, dict]:
    """The reconstruction loss of both AION routes (``adapter``: `aion`, ``codec``: `aion_codec`), each
    with this run's adapted weights (``weights='adapted'``, where they exist) or its initial ones
    (``'base'``), on the same objects: the validation objects of both adaptations (the split is
    by id hash, nested in the fraction), the first `max_objects` of them in index order.

    The loss is each route's `training_loss`: the MSE of the central 96 px in Euclid nanomaggies,
    averaged over objects; ``zero_loss`` is that of reconstructing nothing (the mean square of the
    input), the scale to read it against. Returns {route: {model, loss, zero_loss, objects, weights}}.
    """
    sections = {route: config.section(f"models.{model}") for route, model in ROUTES.items()}
    fraction = min(section.adapt.val_fraction for section in sections.values())
    units = plan_units(read_index_table(config.layout.data.dir), 256)
    held_out = np.concatenate([u.object_ids for u in units])
    held_out = held_out[is_validation(held_out, fraction, config.seed)][:max_objects]
    chosen = set(held_out.tolist())
    results = {}
    for route, model in ROUTES.items():
        encoder = build_encoder(config, model, weights).to(pick_device(sections[route].device)).eval()
        results[route] = {"model": model, **_mean_loss(config, encoder, units, chosen, sections[route])}
    return results


def _mean_loss(config: ResolvedConfig, encoder: AionRoute, units, chosen: set[int], section) -> dict:
    stream = BatchStream(open_source(config), units, encoder.preprocessor, section.embed.batch_size, config.data,
                         lambda ids: np.isin(ids, list(chosen)))
    device = next(encoder.parameters()).device
    total, signal, count = 0.0, 0.0, 0
    with torch.no_grad():
        for item in stream:
            if item.batch is not None:
                batch = {k: v.to(device) for k, v in item.batch.items()}
                total += float(encoder.training_loss(batch)) * len(item.object_ids)
                signal += float(codec_crop(batch["euclid"]).square().mean()) * len(item.object_ids)
                count += len(item.object_ids)
    if not count:
        raise FmbError(f"no usable validation objects to compare the AION routes on ({len(chosen)} held out)")
    return {"loss": total / count, "zero_loss": signal / count, "objects": count,
            "weights": encoder.adapted_from or "initial"}

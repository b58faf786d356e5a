"""AION-1 (`polymathic-aion`): a token encoder-decoder over codec tokens of many modalities.

AION has no Euclid codec, so (as in the original work) two small U-Net adapters translate Euclid
VIS/Y/J/H to the five HSC bands its frozen image codec knows and back. They are trained on the
round trip Euclid -> HSC -> codec tokens -> HSC -> Euclid with a straight-through estimator (the
forward value is the codec reconstruction, the gradient passes the codec as identity), or through
the codec with ``codec_grad: full``. Nothing in the package is monkey-patched: our codec instance
gets its own HSC zero-point rescaler (the package's `backward` for HSC calls a method that does
not exist), a per-instance attribute that leaves every other user of `aion` untouched.

Spectra go through the DESI spectrum codec with the checked inverse variance (finite, 0 where
masked). Embeddings are means over the encoder output of the image tokens, the spectrum tokens and
both together, always passing the true token count (AION's default of 256 silently drops tokens).

Hub weights (the model and both codecs) all come from the one commit `models.aion.revision` resolves
to, recorded as ``repo@commit`` (`fmb.models.hub`).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F

from pydantic import Field

from fmb.config import ModelSection
from fmb.data.schema import BAND_NAMES, ZEROPOINT_NJY_PER_ADU
from fmb.data.validate import Sample
from fmb.models import hub
from fmb.models.base import Encoder, Preprocessor, WeightsError, load_strict
from fmb.models.inputs import bands_batch, object_ids, spectrum_batch


class AionSection(ModelSection):
    adapter_hidden: int = Field(16, ge=4, description="width of the Euclid<->HSC U-Net adapters")
    codec_grad: Literal["ste", "full"] = Field("ste", description="straight-through or full codec gradient")
    image_size: int = Field(96, ge=96, description="Euclid bands are resized to this (the codec crops 96)")
    max_abs: float = Field(100.0, gt=0, description="clamp of the nanomaggy fluxes")

DEFAULT_WEIGHTS = "polymathic-ai/aion-base"
HSC_BANDS = ["HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y"]
CODEC_CROP = 96
_NANOMAGGY_NJY = 3631.0
_TINY_AION = dict(dim=64, encoder_depth=2, decoder_depth=2, num_heads=4, mlp_ratio=4.0, qkv_bias=False,
                  proj_bias=False, mlp_bias=False, norm_bias=False, act_layer="SiLU", gated_mlp=True, qk_norm=False)
_TINY_IMAGE_CODEC = dict(quantizer_levels=[7, 5, 5, 5, 5], hidden_dims=32, multisurvey_projection_dims=16,
                         n_compressions=2, num_consecutive=1, embedding_dim=5)
_TINY_SPECTRUM_CODEC = dict(encoder_dims=(8, 16, 32, 64), encoder_depths=(1, 1, 1, 1), decoder_dims=(32, 16, 8, 1),
                            decoder_depths=(1, 1, 1, 1), latent_channels=64, embedding_dim=10)


class AionPreprocessor(Preprocessor):
    model = "aion"
    needs = frozenset({"bands", "spectrum"})

    def __init__(self, image_size: int, max_abs: float):
        super().__init__(image_size)
        self.max_abs = max_abs

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        scale = torch.tensor([ZEROPOINT_NJY_PER_ADU[b] / _NANOMAGGY_NJY for b in BAND_NAMES])[None, :, None, None]
        euclid = (bands_batch(samples, self.image_size) * scale).clamp(-self.max_abs, self.max_abs)
        spectra = spectrum_batch(samples)
        return {"object_id": object_ids(samples), "euclid": euclid, **{f"spectrum_{k}": v for k, v in spectra.items()}}


# -- adapters -----------------------------------------------------------------------------------------
def _double_conv(c_in: int, c_out: int) -> torch.nn.Sequential:
    return torch.nn.Sequential(
        torch.nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU(inplace=True),
        torch.nn.Conv2d(c_out, c_out, 3, padding=1, bias=False), torch.nn.BatchNorm2d(c_out), torch.nn.ReLU(inplace=True),
    )


class BandAdapter(torch.nn.Module):
    """A two-level U-Net from one band set to another, plus a per-pixel linear band mix.

    The linear mix starts as a sensible band interpolation and the U-Net's output starts at zero,
    so adaptation begins from a physically plausible translation and learns the corrections.
    """

    def __init__(self, mix: torch.Tensor, hidden: int):
        super().__init__()
        c_out, c_in = mix.shape
        self.mix = torch.nn.Conv2d(c_in, c_out, 1, bias=False)
        with torch.no_grad():
            self.mix.weight.copy_(mix[:, :, None, None])
        self.inc, self.down1, self.down2 = _double_conv(c_in, hidden), _double_conv(hidden, 2 * hidden), _double_conv(2 * hidden, 4 * hidden)
        self.reduce1, self.up1 = torch.nn.Conv2d(4 * hidden, 2 * hidden, 1), _double_conv(4 * hidden, 2 * hidden)
        self.reduce2, self.up2 = torch.nn.Conv2d(2 * hidden, hidden, 1), _double_conv(2 * hidden, hidden)
        self.out = torch.nn.Conv2d(hidden, c_out, 1)
        torch.nn.init.zeros_(self.out.weight)
        torch.nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1 = self.inc(x)
        x2 = self.down1(F.max_pool2d(x1, 2))
        x3 = self.down2(F.max_pool2d(x2, 2))
        y = self.up1(torch.cat([self.reduce1(_upsample(x3, x2)), x2], 1))
        y = self.up2(torch.cat([self.reduce2(_upsample(y, x1)), x1], 1))
        return self.mix(x) + self.out(y)


def _upsample(x: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


# Euclid VIS (~0.55-0.9 um), Y, J, H -> HSC g r i z y, and back: nearest-wavelength interpolation.
_EUCLID_TO_HSC = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 1, 0, 0]], dtype=torch.float32)
_HSC_TO_EUCLID = torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]], dtype=torch.float32)


def _hsc_rescaler():
    from aion.codecs.preprocessing.image import RescaleToLegacySurvey

    class HSCRescale(RescaleToLegacySurvey):
        """The exact inverse of the package's forward zero-point rescale (27 -> 22.5) for HSC."""

        def backward(self, image, survey):
            return image * self.convert_zeropoint(27.0) if survey == "HSC" else image

    return HSCRescale()


class AionEncoder(Encoder):
    name = "aion"
    label = "AION-1"
    aligned = False
    section = AionSection

    def __init__(self, aion, image_codec, spectrum_codec, settings: AionSection, source: str):
        super().__init__()
        self.aion, self.image_codec, self.spectrum_codec = aion, image_codec, spectrum_codec
        self.image_codec.rescaler = _hsc_rescaler()  # instance attribute, see the module docstring
        for frozen in (aion, image_codec, spectrum_codec):
            frozen.requires_grad_(False).eval()
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.euclid_to_hsc = BandAdapter(_EUCLID_TO_HSC, settings.adapter_hidden)
            self.hsc_to_euclid = BandAdapter(_HSC_TO_EUCLID, settings.adapter_hidden)
        self.settings, self.source = settings, source
        self.preprocessor = AionPreprocessor(settings.image_size, settings.max_abs)

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in (self.aion, self.image_codec, self.spectrum_codec):
            frozen.eval()  # frozen parts never switch to training behaviour
        return self

    @classmethod
    def load(cls, settings: AionSection) -> "AionEncoder":
        weights = settings.weights or (DEFAULT_WEIGHTS if settings.preset == "full" else "random")
        if weights == "random":
            return cls(*_random_parts(), settings, "random tiny")
        *parts, source = _load_released(weights, settings.revision)
        return cls(*parts, settings, source)

    # -- tokens -------------------------------------------------------------------------------------
    def _image_tokens(self, hsc: torch.Tensor) -> torch.Tensor:
        from aion.modalities import HSCImage

        with torch.autocast(hsc.device.type, enabled=False):  # codecs quantise: keep them in fp32
            return self.image_codec.encode(HSCImage(flux=hsc.float().clone(), bands=HSC_BANDS))  # encode writes in place

    def _spectrum_tokens(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from aion.modalities import DESISpectrum

        spectrum = DESISpectrum(flux=batch["spectrum_flux"].float(), ivar=batch["spectrum_ivar"].float(),
                                mask=batch["spectrum_mask"].bool(), wavelength=batch["spectrum_wavelength"].float())
        with torch.autocast(spectrum.flux.device.type, enabled=False):
            return self.spectrum_codec.encode(spectrum)

    def _mean_encoding(self, tokens: dict[str, torch.Tensor]) -> torch.Tensor:
        total = sum(t.shape[1] for t in tokens.values())  # never AION's default of 256
        return self.aion.encode(tokens, num_encoder_tokens=total).float().mean(1)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = self._image_tokens(self.euclid_to_hsc(batch["euclid"]))
        spectrum = self._spectrum_tokens(batch)
        return {
            "image": self._mean_encoding({"tok_image_hsc": image}),
            "spectrum": self._mean_encoding({"tok_spectrum_desi": spectrum}),
            "joint": self._mean_encoding({"tok_image_hsc": image, "tok_spectrum_desi": spectrum}),
        }

    # -- adaptation ---------------------------------------------------------------------------------
    def round_trip(self, euclid: torch.Tensor) -> torch.Tensor:
        """Euclid -> HSC -> codec -> HSC -> Euclid (straight-through or full gradient)."""
        hsc = self.euclid_to_hsc(euclid)
        if self.settings.codec_grad == "ste":
            with torch.no_grad():
                decoded = self._codec_round_trip(hsc.detach())
            bridge = hsc + (decoded - hsc).detach()
        else:
            bridge = self._codec_round_trip(hsc)
        return self.hsc_to_euclid(bridge)

    def _codec_round_trip(self, hsc: torch.Tensor) -> torch.Tensor:
        tokens = self._image_tokens(hsc)
        with torch.autocast(hsc.device.type, enabled=False):
            decoded = self.image_codec.decode(tokens, bands=HSC_BANDS).flux
        return _paste_centre(decoded, hsc)

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        euclid = batch["euclid"]
        return F.mse_loss(_centre(self.round_trip(euclid)), _centre(euclid))

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.euclid_to_hsc.parameters(), *self.hsc_to_euclid.parameters()]

    def adapted_state(self) -> dict:
        adapters = {"euclid_to_hsc": self.euclid_to_hsc, "hsc_to_euclid": self.hsc_to_euclid}
        return {f"{name}.{k}": v.detach().cpu().clone() for name, module in adapters.items()
                for k, v in module.state_dict().items()}  # parameters and BatchNorm statistics

    def load_adapted_state(self, state: Mapping[str, torch.Tensor]) -> None:
        for name in ("euclid_to_hsc", "hsc_to_euclid"):
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            load_strict(getattr(self, name), part, f"aion {name} adapter weights")
        stray = [k for k in state if not k.startswith(("euclid_to_hsc.", "hsc_to_euclid."))]
        if stray:
            raise WeightsError(f"aion adapted weights have unexpected keys: {stray[:4]}")

    def describe(self) -> dict:
        dim = self.aion.dim
        return {
            "model": "aion", "weights": self.source,
            "preprocessing": f"Euclid bands x ZP/3631 (nanomaggies), resized to {self.settings.image_size}px, clamped "
            f"+-{self.settings.max_abs}; U-Net adapters Euclid->HSC (hidden {self.settings.adapter_hidden}); DESI codec "
            "with checked ivar",
            "pooling": "mean of AION.encode over the modality's tokens (true token count)",
            "layer": "encoder output (decoder context)",
            "dims": {m: dim for m in ("image", "spectrum", "joint")},
        }


def _centre(x: torch.Tensor) -> torch.Tensor:
    """The central CODEC_CROP pixels: the part the codec sees."""
    top, left = (x.shape[-2] - CODEC_CROP) // 2, (x.shape[-1] - CODEC_CROP) // 2
    return x[..., top:top + CODEC_CROP, left:left + CODEC_CROP]


def _paste_centre(centre: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` with its central crop replaced by the codec reconstruction `centre`."""
    if centre.shape[-2:] == full.shape[-2:]:
        return centre.to(full.dtype)
    out = full.clone()
    _centre(out).copy_(centre)
    return out


def _random_parts():
    from aion import AION
    from aion.codecs import ImageCodec, SpectrumCodec

    with torch.random.fork_rng():  # random weights are still reproducible ones
        torch.manual_seed(0)
        domains = ["tok_image_hsc", "tok_spectrum_desi"]
        return (AION(dict(domains_in=domains, domains_out=domains, **_TINY_AION)), ImageCodec(**_TINY_IMAGE_CODEC),
                SpectrumCodec(**_TINY_SPECTRUM_CODEC))


def _load_released(weights: str, revision: str | None):
    """(AION, image codec, spectrum codec, source) from a hub repo or a local snapshot directory; all strictly."""
    local = Path(weights).expanduser()
    try:
        return (*_local_parts(local), weights) if local.is_dir() else _hub_parts(weights, revision)
    except RuntimeError as exc:
        raise WeightsError(f"aion weights {weights} do not fit the architecture: {exc}") from None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise WeightsError(f"cannot load aion weights {weights}: {exc}") from None


def _hub_parts(repo_id: str, revision: str | None):
    """Through the package's loaders, everything at the one commit `revision` resolves to (resolved
    once, on config.json: a branch moving between two downloads cannot mix two commits)."""
    from aion import AION
    from aion.codecs import ImageCodec, SpectrumCodec
    from aion.modalities import DESISpectrum, HSCImage

    _, commit = hub.download(repo_id, "config.json", revision, "aion weights")
    # the codecs' from_pretrained forwards `revision` to huggingface_hub's ModelHubMixin, like AION's
    return (AION.from_pretrained(repo_id, revision=commit, strict=True),
            ImageCodec.from_pretrained(repo_id, modality=HSCImage, revision=commit, strict=True),
            SpectrumCodec.from_pretrained(repo_id, modality=DESISpectrum, revision=commit, strict=True),
            hub.pinned(repo_id, commit))


def _local_parts(directory: Path):
    from aion import AION
    from aion.codecs import ImageCodec, SpectrumCodec

    # the package's codec loader cannot read nested local folders
    return (AION.from_pretrained(str(directory), strict=True), _local_codec(ImageCodec, directory, "image"),
            _local_codec(SpectrumCodec, directory, "spectrum"))


def _local_codec(codec_class, directory: Path, name: str):
    from safetensors.torch import load_file

    folder = directory / "codecs" / name
    codec = codec_class(**json.loads((folder / "config.json").read_text()))
    load_strict(codec, load_file(folder / "model.safetensors"), f"aion {name} codec weights")
    return codec

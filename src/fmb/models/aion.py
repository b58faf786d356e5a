"""AION-1 (`polymathic-aion`): a token encoder-decoder over codec tokens of many modalities.

AION has no Euclid codec. Two routes turn the four Euclid bands into the image tokens its frozen
transformer reads (`AionRoute`, one encoder each, so the model name is the one place a route is chosen):

* ``aion`` (this module, as in the original work): two small U-Net adapters translate Euclid
  VIS/Y/J/H to the five HSC bands the frozen image codec knows and back. They are trained on the
  round trip Euclid -> HSC -> codec tokens -> HSC -> Euclid with a straight-through estimator (the
  forward value is the codec reconstruction, the gradient passes the codec as identity), or through
  the codec with ``codec_grad: full``. The codec takes HSC images in HSC counts (zero point 27) and
  divides them by 10^((27 - 22.5) / 2.5) = 63.1 to reach nanomaggies, so the adapters start from the
  band mix times that factor (and back): the codec then sees the Euclid nanomaggies themselves
  (without it, as in the original, it saw them 63 times too faint and its reconstruction came back
  63 times too bright until the adapters learnt the factor);
* ``aion_codec`` (`fmb.models.aion_codec`): the image codec itself reads and writes the Euclid bands,
  its encoder and decoder fine-tuned on them, its quantiser fixed.

Both are adapted on the same objective (`training_loss`: the MSE of the codec's central 96 px in
Euclid nanomaggies) and feed the transformer the same token key, so their losses and embeddings
compare directly. Nothing in the package is monkey-patched: our HSC codec instance gets its own
zero-point rescaler (the package's `backward` for HSC calls a method that does not exist), a
per-instance attribute that leaves every other user of `aion` untouched.

Spectra go through the DESI spectrum codec with the checked inverse variance (finite, 0 where
masked). Embeddings are means over the encoder output of the image tokens, the spectrum tokens and
both together, always passing the true token count (AION's default of 256 silently drops tokens).

The three embeddings need three encoder passes, since they mean different things: ``joint`` is the
encoding of the image tokens and the spectrum tokens attending to each other (what AION makes of the
object); ``image`` is what it makes of the image alone (the spectrum unseen), ``spectrum`` of the
spectrum alone. The image tokens' states in the joint pass already carry the spectrum, so the
per-modality embeddings cannot be read from it without changing their meaning (and the detectors'
image-vs-spectrum mismatch would compare two views that have each seen the other). What is shared is
shared: the codecs and adapters run once per object and the token embeddings are made once; the
single-modality passes encode the image's 576 and the spectrum's 273 of those same embedded tokens
as two sequences of their own. (One 849-token sequence under a block-diagonal mask gives the same
numbers in one call fewer, but the CPU's fused attention kernel computes the masked blocks anyway:
it cost 1.56x the two short sequences' CPU time at the tiny preset, where attention dominates.)
Attention runs through SDPA (`fmb.models.attention.use_sdpa`, swapped in at load time).

Hub weights (the model and both codecs) all come from the one commit `models.<route>.revision`
resolves to, recorded as ``repo@commit`` (`fmb.models.hub`).
"""

from __future__ import annotations

import json
from abc import abstractmethod
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F


from fmb.data.schema import BAND_NAMES, ZEROPOINT_NJY_PER_ADU
from fmb.data.validate import Sample
from fmb.models import hub
from fmb.models.attention import use_sdpa
from fmb.models.base import Encoder, Preprocessor, WeightsError, base_weights, load_strict
from fmb.models.inputs import bands_batch, object_ids, spectrum_batch
from fmb.models.sections import AionInputs, AionSection

DEFAULT_WEIGHTS = "polymathic-ai/aion-base"
HSC_BANDS = ["HSC-G", "HSC-R", "HSC-I", "HSC-Z", "HSC-Y"]
HSC_ZEROPOINT = 27.0  # of HSC counts, which the package's codec rescales to nanomaggies (zero point 22.5)
CODEC_CROP = 96
IMAGE_TOKEN_KEY = "tok_image_hsc"  # both routes feed the transformer the tokens of its HSC image embedding
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

    def __init__(self, image_size: int, max_abs: float, model: str = "aion"):
        super().__init__(image_size)
        self.max_abs, self.model = max_abs, model

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
EUCLID_TO_HSC = torch.tensor([[1, 0, 0, 0], [1, 0, 0, 0], [1, 0, 0, 0], [0.5, 0.5, 0, 0], [0, 1, 0, 0]], dtype=torch.float32)
HSC_TO_EUCLID = torch.tensor([[0, 1 / 3, 1 / 3, 1 / 3, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1], [0, 0, 0, 0, 1]], dtype=torch.float32)


def _hsc_rescaler():
    from aion.codecs.preprocessing.image import RescaleToLegacySurvey

    class HSCRescale(RescaleToLegacySurvey):
        """The exact inverse of the package's forward zero-point rescale (27 -> 22.5) for HSC."""

        def backward(self, image, survey):
            return image * self.convert_zeropoint(HSC_ZEROPOINT) if survey == "HSC" else image

    return HSCRescale()


class AionRoute(Encoder):
    """AION-1 with one way of turning the Euclid bands into image tokens (`image_tokens`) and back
    (`reconstruct`, the adaptation objective's graph), and the modules adaptation changes
    (`adapted_modules`). Weights, the spectrum side, pooling and checkpoints are common."""

    aligned = False

    def __init__(self, aion, image_codec, spectrum_codec, settings: AionInputs, source: str):
        super().__init__()
        use_sdpa(aion)  # the same function and weights, through the fused attention kernels
        self.aion, self.image_codec, self.spectrum_codec = aion, image_codec, spectrum_codec
        for frozen in (aion, image_codec, spectrum_codec):
            frozen.requires_grad_(False).eval()  # a route unfreezes what it adapts
        self.settings, self.source = settings, source
        self.preprocessor = AionPreprocessor(settings.image_size, settings.max_abs, self.name)
        self.route = self._build_route()

    @abstractmethod
    def _build_route(self) -> str:
        """Build the route's own modules; returns the manifest's words for how Euclid becomes tokens."""

    @abstractmethod
    def image_tokens(self, euclid: torch.Tensor) -> torch.Tensor:
        """(B, 4, H, W) Euclid nanomaggies -> (B, 576) codes of the transformer's image vocabulary."""

    @abstractmethod
    def reconstruct(self, euclid: torch.Tensor) -> torch.Tensor:
        """Euclid -> image tokens -> Euclid, differentiable in what the route adapts."""

    @abstractmethod
    def adapted_modules(self) -> dict[str, torch.nn.Module]:
        """The modules adaptation changes, by the prefix of their keys in the adapted state."""

    def frozen_modules(self) -> tuple[torch.nn.Module, ...]:
        return self.aion, self.image_codec, self.spectrum_codec

    def inference_blocks(self) -> list[torch.nn.Module]:
        return list(self.aion.encoder)

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in self.frozen_modules():
            frozen.eval()  # frozen parts never switch to training behaviour
        return self

    @classmethod
    def load(cls, settings: AionInputs) -> "AionRoute":
        weights = base_weights(settings, DEFAULT_WEIGHTS)
        if weights == "random":
            return cls(*_random_parts(), settings, "random tiny")
        *parts, source = _load_released(weights, settings.revision)
        return cls(*parts, settings, source)

    @classmethod
    def hub_files(cls, settings: AionInputs) -> list[hub.HubFile]:
        """The model and the HSC image and DESI spectrum codecs `_hub_parts` reads: config and weights
        at the repo's root and in its sub-folders ``codecs/<modality>/`` (the package's layout)."""
        from aion.modalities import DESISpectrum, HSCImage
        from huggingface_hub.constants import CONFIG_NAME, SAFETENSORS_SINGLE_FILE

        weights = base_weights(settings, DEFAULT_WEIGHTS)
        if weights == "random" or Path(weights).expanduser().is_dir():
            return []
        folders = ["", *(f"codecs/{modality.name}/" for modality in (HSCImage, DESISpectrum))]
        return [hub.HubFile(weights, folder + name)
                for folder in folders for name in (CONFIG_NAME, SAFETENSORS_SINGLE_FILE)]

    # -- tokens -------------------------------------------------------------------------------------
    def _spectrum_tokens(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        from aion.modalities import DESISpectrum

        spectrum = DESISpectrum(flux=batch["spectrum_flux"].float(), ivar=batch["spectrum_ivar"].float(),
                                mask=batch["spectrum_mask"].bool(), wavelength=batch["spectrum_wavelength"].float())
        with torch.autocast(spectrum.flux.device.type, enabled=False):
            return self.spectrum_codec.encode(spectrum)

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = self.image_tokens(batch["euclid"])
        spectrum = self._spectrum_tokens(batch)
        return self.encode_passes(image, spectrum)

    def encode_passes(self, image: torch.Tensor, spectrum: torch.Tensor) -> dict[str, torch.Tensor]:
        """Mean encodings of the image and the spectrum tokens together (``joint``) and each alone
        (see the module docstring): the joint sequence, then each modality's part of it by itself."""
        n_image, total = image.shape[1], image.shape[1] + spectrum.shape[1]  # never AION's default of 256
        x, emb, mask, _ = self.aion.embed_inputs({IMAGE_TOKEN_KEY: image, "tok_spectrum_desi": spectrum},
                                                 num_encoder_tokens=total)
        if not mask.any():  # (B, 1, N): keys AION masks; never here, where every token is real
            mask = None  # no mask at all: the faster kernel
        parts = {"joint": slice(None), "image": slice(None, n_image), "spectrum": slice(n_image, None)}
        return {name: self._encoded(x[:, part], emb[:, part], None if mask is None else mask[:, :, part]).mean(1)
                for name, part in parts.items()}

    def _encoded(self, tokens: torch.Tensor, emb: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """`AION.encode` from its embedded inputs, under an attention mask of our choosing."""
        encoded = self.aion.forward_encoder(tokens + emb, encoder_mask=mask)
        return (self.aion.decoder_proj_context(encoded) + emb).float()

    # -- adaptation ---------------------------------------------------------------------------------
    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """MSE of the codec's central crop in Euclid nanomaggies: the same number for every route."""
        euclid = batch["euclid"]
        return F.mse_loss(codec_crop(self.reconstruct(euclid)), codec_crop(euclid))

    def adapted_state(self) -> dict:
        return {f"{name}.{k}": v.detach().cpu().clone() for name, module in self.adapted_modules().items()
                for k, v in module.state_dict().items()}  # parameters and buffers (BatchNorm statistics)

    def load_adapted_state(self, state: Mapping[str, torch.Tensor]) -> None:
        modules = self.adapted_modules()
        for name, module in modules.items():
            part = {k[len(name) + 1:]: v for k, v in state.items() if k.startswith(name + ".")}
            load_strict(module, part, f"{self.name} {name} weights")
        stray = [k for k in state if not k.startswith(tuple(name + "." for name in modules))]
        if stray:
            raise WeightsError(f"{self.name} adapted weights have unexpected keys: {stray[:4]}")

    def describe(self) -> dict:
        dim = self.aion.dim
        return {
            "model": self.name, "weights": self.source,
            "preprocessing": f"Euclid bands x ZP/3631 (nanomaggies), resized to {self.settings.image_size}px, clamped "
            f"+-{self.settings.max_abs}; {self.route}; DESI codec with checked ivar",
            "pooling": "mean of AION.encode over the modality's tokens (true token count)",
            "layer": "encoder output (decoder context)",
            "dims": {m: dim for m in ("image", "spectrum", "joint")},
        }


class AionEncoder(AionRoute):
    """The adapter route: Euclid -> U-Net -> HSC bands -> the frozen HSC image codec."""

    name = "aion"
    label = "AION-1"
    section = AionSection

    def _build_route(self) -> str:
        hidden = self.settings.adapter_hidden
        self.image_codec.rescaler = _hsc_rescaler()  # instance attribute, see the module docstring
        counts = self.image_codec.rescaler.convert_zeropoint(HSC_ZEROPOINT)  # HSC counts per nanomaggy
        with torch.random.fork_rng():
            torch.manual_seed(0)
            self.euclid_to_hsc = BandAdapter(EUCLID_TO_HSC * counts, hidden)
            self.hsc_to_euclid = BandAdapter(HSC_TO_EUCLID / counts, hidden)
        return f"U-Net adapters Euclid->HSC (hidden {hidden})"

    def image_tokens(self, euclid: torch.Tensor) -> torch.Tensor:
        return self._hsc_tokens(self.euclid_to_hsc(euclid))

    def _hsc_tokens(self, hsc: torch.Tensor) -> torch.Tensor:
        from aion.modalities import HSCImage

        with torch.autocast(hsc.device.type, enabled=False):  # codecs quantise: keep them in fp32
            return self.image_codec.encode(HSCImage(flux=hsc.float().clone(), bands=HSC_BANDS))  # encode writes in place

    def reconstruct(self, euclid: torch.Tensor) -> torch.Tensor:
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
        tokens = self._hsc_tokens(hsc)
        with torch.autocast(hsc.device.type, enabled=False):
            decoded = self.image_codec.decode(tokens, bands=HSC_BANDS).flux
        return _paste_centre(decoded, hsc)

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return [*self.euclid_to_hsc.parameters(), *self.hsc_to_euclid.parameters()]

    def adapted_modules(self) -> dict[str, torch.nn.Module]:
        return {"euclid_to_hsc": self.euclid_to_hsc, "hsc_to_euclid": self.hsc_to_euclid}


def codec_crop(x: torch.Tensor) -> torch.Tensor:
    """The central CODEC_CROP pixels: the part the codec sees."""
    top, left = (x.shape[-2] - CODEC_CROP) // 2, (x.shape[-1] - CODEC_CROP) // 2
    return x[..., top:top + CODEC_CROP, left:left + CODEC_CROP]


def _paste_centre(centre: torch.Tensor, full: torch.Tensor) -> torch.Tensor:
    """`full` with its central crop replaced by the codec reconstruction `centre`."""
    if centre.shape[-2:] == full.shape[-2:]:
        return centre.to(full.dtype)
    out = full.clone()
    codec_crop(out).copy_(centre)
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

"""AstroPT (`astropt` package): an autoregressive GPT over image patches and spectrum patches.

Loading: released checkpoints (e.g. ``smith42/astropt_v2.0/astropt/095M/ckpt.pt``, at
`models.astropt.revision`, see `fmb.models.hub`) are read as the package's `load_astropt` reads them
(GPT from their ``model_args`` and pickled modality registry, ``_orig_mod.`` prefixes stripped,
strict), but through fmb's restricted reader, not `load_astropt`'s ``torch.load(weights_only=False)``:
a planted pickle cannot run code (`_checkpoint_classes`). Released models read images only, so
the spectrum modality is added: a new GPT with both modalities receives every loaded tensor (each
must exist with the same shape), and only the spectrum tokeniser, position encoder and decoder
start random — anything else left unloaded is a `WeightsError`.

Input: the RGB composite resized to `image_size` and cut into 16x16 patches (images first, so the
spectrum tokens attend to the image of the same object); the spectrum divided by its standard
deviation, in patches of 10 pixels positioned by their wavelengths. Both come from one `Sample`,
so an image is never paired with another object's spectrum.

The package's GPT already attends through SDPA (causal, ``is_causal=True``); its MLP computes the
tanh GELU by hand in seven element-wise passes over the widest activations (``new_gelu``), which cost
about half as much as the MLP's two matrix products on a CPU. `use_fused_gelu`, at load time, gives
each MLP the same function in one fused kernel (``F.gelu(approximate="tanh")``), its modules and
weights unchanged.

Embeddings are read after the middle block (or after ln_f with ``layer: last``) and the forward
pass stops there; image and spectrum are the means over their tokens, joint is the normalised sum
of the two normalised means (as in the original work). Adaptation fine-tunes the whole GPT on the
next-token Huber loss, both modalities weighted equally.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from pathlib import Path

import einops
import torch
import torch.nn.functional as F


from fmb.data.validate import Sample
from fmb.io import read_torch
from fmb.models import hub
from fmb.models.attention import swap_modules
from fmb.models.base import Encoder, Preprocessor, WeightsError, base_weights, load_strict
from fmb.models.inputs import object_ids, rgb_batch, spectrum_batch
from fmb.models.sections import AstroPTSection

IMAGE_PATCH = 16
SPECTRUM_PATCH = 10
DEFAULT_WEIGHTS = "smith42/astropt_v2.0/astropt/095M/ckpt.pt"
_SPECTRUM_KEYS = ("transformer.wte.spectra.", "transformer.wpe.spectra.", "lm_head.spectra.")
_PRESETS = {
    "full": dict(n_layer=12, n_head=12, n_embd=768),
    "tiny": dict(n_layer=2, n_head=2, n_embd=64),
}


class AstroPTPreprocessor(Preprocessor):
    model = "astropt"
    needs = frozenset({"rgb", "spectrum"})

    def __init__(self, image_size: int):
        if image_size % IMAGE_PATCH:
            raise ValueError(f"astropt image_size must be a multiple of {IMAGE_PATCH}, got {image_size}")
        super().__init__(image_size)

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        images = rgb_batch(samples, self.image_size)
        patches = einops.rearrange(images, "b c (h p1) (w p2) -> b (h w) (p1 p2 c)", p1=IMAGE_PATCH, p2=IMAGE_PATCH)
        spectra = spectrum_batch(samples)
        flux = _unit_scale(spectra["flux"], spectra["mask"])
        pad = (-flux.shape[1]) % SPECTRUM_PATCH
        flux = F.pad(flux, (0, pad))
        wave = F.pad((spectra["wavelength"] - 3000.0) / 7000.0, (0, pad))
        return {
            "object_id": object_ids(samples),
            "images": patches,
            "images_positions": torch.arange(patches.shape[1]).expand(len(samples), -1).clone(),
            "spectra": einops.rearrange(flux, "b (n p) -> b n p", p=SPECTRUM_PATCH),
            "spectra_positions": einops.rearrange(wave, "b (n p) -> b n p", p=SPECTRUM_PATCH),
        }


def _unit_scale(flux: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Divide each spectrum by the standard deviation of its unmasked pixels (no mean subtraction)."""
    good = (~mask).float()
    count = good.sum(1, keepdim=True).clamp_min(1)
    mean = (flux * good).sum(1, keepdim=True) / count
    std = (((flux - mean) ** 2 * good).sum(1, keepdim=True) / count).sqrt()
    return torch.where(std > 0, flux / (std + 1e-8), flux) * good


def _registry(n_image_tokens_input: int):
    from astropt.model import ModalityConfig, ModalityRegistry

    return ModalityRegistry([
        ModalityConfig("images", input_size=n_image_tokens_input, pos_input_size=1, patch_size=IMAGE_PATCH, embed_pos=True),
        _spectrum_modality(),
    ])


def _spectrum_modality():
    from astropt.model import ModalityConfig

    return ModalityConfig("spectra", input_size=SPECTRUM_PATCH, pos_input_size=SPECTRUM_PATCH,
                          patch_size=SPECTRUM_PATCH, embed_pos=False)


class AstroPTEncoder(Encoder):
    name = "astropt"
    label = "AstroPT"
    aligned = False
    section = AstroPTSection

    def __init__(self, gpt, settings: AstroPTSection, source: str):
        super().__init__()
        use_fused_gelu(gpt)
        self.gpt, self.settings, self.source = gpt, settings, source
        self.preprocessor = AstroPTPreprocessor(settings.image_size)
        n_tokens = (settings.image_size // IMAGE_PATCH) ** 2 + -(-7781 // SPECTRUM_PATCH)
        if n_tokens > gpt.config.block_size:
            raise WeightsError(f"astropt block_size {gpt.config.block_size} < {n_tokens} tokens at image_size "
                               f"{settings.image_size}; lower models.astropt.image_size")

    @classmethod
    def load(cls, settings: AstroPTSection) -> "AstroPTEncoder":
        weights = base_weights(settings, DEFAULT_WEIGHTS)
        if weights == "random":
            return cls(_random_gpt(settings), settings, f"random {settings.preset}")
        gpt, source = _load_released(weights, settings.revision)
        return cls(_with_spectra(gpt), settings, source)

    @classmethod
    def hub_files(cls, settings: AstroPTSection) -> list[hub.HubFile]:
        """The one checkpoint file the weights name (none for random or local weights)."""
        weights = base_weights(settings, DEFAULT_WEIGHTS)
        item = None if weights == "random" else _hub_file(weights)
        return [item] if item else []

    # -- forward ----------------------------------------------------------------------------------
    def _hidden(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Token states at the read-out layer; blocks after it are not run."""
        t = self.gpt.transformer
        names = self.gpt.modality_registry.names()
        tokens = torch.cat([t.wte[n](batch[n]) for n in names], 1) + torch.cat([t.wpe[n](batch[n + "_positions"]) for n in names], 1)
        x = t.drop(tokens)
        last = len(t.h) // 2 if self.settings.layer == "middle" else len(t.h) - 1
        for block in t.h[: last + 1]:
            x = block(x)
        return t.ln_f(x) if self.settings.layer == "last" else x

    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        x = self._hidden(batch)
        n_image = batch["images"].shape[1]
        image, spectrum = x[:, :n_image].mean(1), x[:, n_image:].mean(1)
        joint = F.normalize(F.normalize(image, dim=-1) + F.normalize(spectrum, dim=-1), dim=-1)
        return {"image": image, "spectrum": spectrum, "joint": joint}

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        inputs = {k: v for k, v in batch.items() if k != "object_id"}
        targets = {"images": batch["images"][:, 1:], "spectra": batch["spectra"]}
        return self.gpt(inputs, targets=targets)[1]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return list(self.gpt.parameters())

    def inference_blocks(self) -> list[torch.nn.Module]:
        return list(self.gpt.transformer.h)

    def describe(self) -> dict:
        cfg = self.gpt.config
        return {
            "model": "astropt", "weights": self.source,
            "architecture": f"GPT {cfg.n_layer} layers, {cfg.n_head} heads, {cfg.n_embd} wide, block {cfg.block_size}",
            "preprocessing": f"RGB /255 resized to {self.settings.image_size}px, {IMAGE_PATCH}px patches; spectrum / std, "
            f"{SPECTRUM_PATCH}-px patches positioned by wavelength",
            "pooling": "mean over each modality's tokens; joint = normalise(normalise(image) + normalise(spectrum))",
            "layer": f"after block {cfg.n_layer // 2}" if self.settings.layer == "middle" else "final ln_f",
            "dims": {"image": cfg.n_embd, "spectrum": cfg.n_embd, "joint": cfg.n_embd},
        }


class FusedGeluMLP(torch.nn.Module):
    """A drop-in for `astropt.model.MLP` (same modules, so the same state dict): its tanh GELU in one kernel."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.c_fc, self.c_proj, self.dropout = original.c_fc, original.c_proj, original.dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.c_proj(F.gelu(self.c_fc(x), approximate="tanh")))


def use_fused_gelu(gpt: torch.nn.Module) -> int:
    """Replace, in place, each `astropt.model.MLP` (its hand-written GELU) by `FusedGeluMLP`; returns
    how many. Modules of any other class are left as they are."""
    from astropt.model import MLP

    return swap_modules(gpt, {MLP: FusedGeluMLP})


def _random_gpt(settings: AstroPTSection):
    from astropt.model import GPT, GPTConfig

    n_tokens = (settings.image_size // IMAGE_PATCH) ** 2 + -(-7781 // SPECTRUM_PATCH)
    config = GPTConfig(block_size=max(1024, n_tokens), dropout=0.0, bias=False, attn_type="causal", tokeniser="aim",
                       **_PRESETS[settings.preset])
    with _seeded():
        return GPT(config, _registry(IMAGE_PATCH * IMAGE_PATCH * 3), master_process=False)


@contextlib.contextmanager
def _seeded():
    """Random weights that are still reproducible ones (the same in every process and load, so a
    resumed embedding run finds the same weights)."""
    with torch.random.fork_rng():
        torch.manual_seed(0)
        yield


def _load_released(weights: str, revision: str | None):
    """(GPT, source) from a local checkpoint file or a hub id with path (``owner/repo/[path/]file.pt``)."""
    path, source = _checkpoint_file(weights, revision)
    checkpoint = read_torch(path, "an astropt checkpoint", allowed=_checkpoint_classes())
    return _gpt_from(checkpoint, source), source


def _checkpoint_file(weights: str, revision: str | None) -> tuple[Path, str]:
    """The checkpoint's local path and how it is recorded (hub files: ``weights@commit``)."""
    return hub.fetch(weights, _hub_file(weights), revision, "astropt weights")


def _hub_file(weights: str) -> hub.HubFile | None:
    """The hub file ``owner/repo/[path/]file.pt`` names; None for a local file."""
    if Path(weights).expanduser().is_file():
        return None
    parts = weights.split("/")
    if len(parts) < 3:
        raise WeightsError(f"astropt weights {weights!r}: expected a local file or owner/repo/[path/]file.pt")
    return hub.HubFile("/".join(parts[:2]), "/".join(parts[2:]))


def _checkpoint_classes() -> tuple[type, ...]:
    """The only classes an astropt checkpoint may hold besides tensors and plain values: its pickled
    modality registry. Restoring them under ``weights_only`` runs no code of the file's choosing:
    neither defines ``__new__``, ``__setstate__``, ``__setattr__`` or ``__reduce__``, so the unpickler
    makes them with ``object.__new__`` and updates their ``__dict__`` with values it vetted itself; the
    one other call a pickle could make, their constructors, only stores its arguments (the registry
    keys them by ``.name``). Anything else the file names is still refused."""
    from astropt.model import ModalityConfig, ModalityRegistry

    return ModalityRegistry, ModalityConfig


def _gpt_from(checkpoint, source: str):
    """The GPT a checkpoint declares, with its tensors loaded strictly (as `load_astropt` builds it)."""
    from astropt.model import GPT, GPTConfig

    try:
        gpt = GPT(GPTConfig(**checkpoint["model_args"]), checkpoint["modality_registry"], master_process=False)
        # torch.compile'd models save their keys prefixed; load_astropt strips the prefix too
        state = {k.removeprefix("_orig_mod."): v for k, v in checkpoint["model"].items()}
    except (KeyError, TypeError, AttributeError, ValueError, AssertionError) as exc:
        raise WeightsError(f"cannot load astropt weights {source}: not an astropt checkpoint "
                           f"({type(exc).__name__}: {exc})") from None
    try:
        load_strict(gpt, state, "their tensors")
    except WeightsError as exc:
        raise WeightsError(f"astropt weights {source} do not fit their declared architecture: {exc}") from None
    return gpt


def _with_spectra(loaded):
    """A GPT with the loaded modalities plus spectra, carrying every loaded tensor."""
    from astropt.model import GPT, ModalityRegistry

    modalities = dict(loaded.modality_registry.modalities)
    images = modalities.get("images")
    if images is None or images.input_size != IMAGE_PATCH * IMAGE_PATCH * 3:
        raise WeightsError("astropt weights must include an 'images' modality of 16x16 RGB patches "
                           f"(found {sorted(modalities)})")
    if "spectra" in modalities:
        return loaded
    registry = ModalityRegistry([*modalities.values(), _spectrum_modality()])
    with _seeded():  # the new spectrum parts
        extended = GPT(loaded.config, registry, master_process=False)
    state = extended.state_dict()
    loaded_state = loaded.state_dict()
    new_keys = [k for k in state if k not in loaded_state]
    if any(not k.startswith(_SPECTRUM_KEYS) for k in new_keys):
        raise WeightsError(f"astropt: keys neither loaded nor spectrum-specific: {[k for k in new_keys if not k.startswith(_SPECTRUM_KEYS)][:4]}")
    load_strict(extended, {**{k: state[k] for k in new_keys}, **loaded_state}, "astropt weights")
    return extended

"""The one encoder interface every model implements (AION, AstroPT, AstroCLIP, pixel PCA).

An `Encoder` is a torch module that

* has a `Preprocessor`: which parts of a checked `Sample` it needs (``bands``, ``rgb``,
  ``spectrum``) and how a list of samples becomes a CPU batch (run in DataLoader workers);
* returns pooled per-object embeddings for ``image``, ``spectrum`` and ``joint`` (`embed`);
* defines its adaptation objective (`training_loss`) and which parameters adapt;
* describes itself for the embedding manifest (`describe`), and for the registry (`fmb.plugins`):
  ``name``, ``label`` (figures, report), ``aligned`` (image and spectrum spaces aligned by training,
  so their cosine means something) and ``section`` (its config section class, ``models.<name>``);
* adapts itself (`adapt`): by default the shared trainer; the pixel reference fits a PCA instead.

Weight loading is strict everywhere: a missing or unexpected key is a `WeightsError` listing them,
never a model silently left with random weights.
"""

from __future__ import annotations

import hashlib
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import ClassVar

import torch

from fmb.data.validate import Sample
from fmb.errors import FmbError

MODALITIES = ("image", "spectrum", "joint")


def residual_key(modality: str) -> str:
    """The key under which `Encoder.embed` may return, beside a modality's embedding, one number per
    object: its own noise-weighted reconstruction residual (the part its embedding cannot hold)."""
    return f"{modality}_residual"


def covariate_key(name: str) -> str:
    """The key under which `Encoder.embed` may return one nuisance covariate per object (a number
    that describes how it was observed, not what it is: e.g. a neighbour count), stored beside the
    embeddings as a column of their parts."""
    return f"covariate_{name}"


class WeightsError(FmbError):
    """Weights do not fit the architecture (missing/unexpected keys, wrong shapes) or cannot be found."""


class Preprocessor(ABC):
    """The CPU half of a model, run in DataLoader workers: which samples it can use, and how they
    become a batch of tensors (object ids under ``object_id``). Small and picklable: no weights."""

    model: ClassVar[str]
    needs: ClassVar[frozenset[str]]  # Sample fields that must be present: bands, rgb, spectrum

    def __init__(self, image_size: int):
        self.image_size = image_size  # every model resizes its images to its own input size

    def usable(self, sample: Sample) -> str | None:
        """None when the sample has what this model needs, else the reason it cannot be used."""
        missing = [part for part in sorted(self.needs) if getattr(sample, part) is None]
        return f"no usable {' or '.join(missing)} (needed by {self.model})" if missing else None

    @abstractmethod
    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]: ...


class Encoder(torch.nn.Module, ABC):
    name: ClassVar[str]
    label: ClassVar[str]
    aligned: ClassVar[bool] = False
    section: ClassVar[type]  # a subclass of fmb.config.ModelSection
    modalities: ClassVar[tuple[str, ...]] = MODALITIES
    residual_modalities: ClassVar[tuple[str, ...]] = ()  # those `embed` gives a `residual_key` value for
    covariates: ClassVar[tuple[str, ...]] = ()  # those `embed` gives a `covariate_key` value for
    requires_adaptation: ClassVar[bool] = False  # True: unusable before `fmb adapt` (e.g. a fitted PCA)
    preprocessor: Preprocessor

    def adapt(self, run) -> dict:
        """Stage 1 for this model, given an `fmb.models.tasks.AdaptRun`: train with the shared trainer."""
        return run.train()

    @classmethod
    @abstractmethod
    def load(cls, settings) -> "Encoder":
        """Build the architecture of `settings.preset` and load its base weights (strictly)."""

    @classmethod
    def hub_files(cls, settings) -> list:
        """The hub files (`fmb.models.hub.HubFile`) to fetch ahead of a run on a machine with network
        (`fmb setup download`) and to verify on one without (`fmb setup check`): at least those
        `load(settings)` reads; none by default."""
        return []

    @abstractmethod
    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Pooled embeddings {modality: (B, D) float} for this model's modalities."""

    @abstractmethod
    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The adaptation objective on one batch (a scalar)."""

    @abstractmethod
    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        """Parameters that adaptation updates (everything else stays frozen)."""

    @abstractmethod
    def describe(self) -> dict:
        """Model id, weights, preprocessing, pooling, layer and dims, for the manifest."""

    def gradient_checkpoint_blocks(self) -> list[torch.nn.Module]:
        """The blocks whose activations `adapt.gradient_checkpointing` recomputes in the backward pass
        instead of keeping (the trainer wraps their forward in torch.utils.checkpoint): the repeated
        blocks that gradients flow through, e.g. a transformer's layers. None by default."""
        return []

    def inference_blocks(self) -> list[torch.nn.Module]:
        """The repeated blocks of the embedding forward (a transformer's layers), which embedding
        compiles on a GPU (`torch.compile`); none by default."""
        return []

    def adapted_state(self) -> dict:
        """What adaptation changes (saved in checkpoints); by default the trainable modules' state."""
        names = {id(p) for p in self.trainable_parameters()}
        return {k: v.detach().cpu().clone() for k, v in self.named_parameters() if id(v) in names}

    def load_adapted_state(self, state: Mapping[str, torch.Tensor]) -> None:
        expected = set(self.adapted_state())
        check_keys(expected, set(state), what=f"{self.name} adapted weights")
        params = dict(self.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value)


class FittedEncoder(Encoder):
    """A reference that is fitted on a sample of the run's objects (a PCA, a standardisation), not
    trained: `fit` on `settings.fit_objects` objects is its adaptation, its buffers its adapted state."""

    requires_adaptation = True

    def adapt(self, run) -> dict:
        batch = run.sample(self.settings.fit_objects)
        self.fit(batch, seed=run.config.seed)
        fitted_on = int(len(batch["object_id"]))
        run.save_adapted(fitted_on=fitted_on)
        return {"fitted_on": fitted_on}

    @abstractmethod
    def fit(self, batch: Mapping[str, torch.Tensor], seed: int = 0) -> None:
        """Fit the buffers on one merged batch of preprocessed objects."""

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        raise NotImplementedError(f"the {self.label} reference is fitted, not trained")

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        return []

    def adapted_state(self) -> dict:
        return {k: v.clone() for k, v in self.state_dict().items()}

    def load_adapted_state(self, state: Mapping[str, torch.Tensor]) -> None:
        load_strict(self, state, f"{self.label} fitted state")


def base_weights(settings, released: str) -> str:
    """The weights `models.<name>` asks for: as set, else the `released` ones (preset full) or random."""
    return settings.weights or (released if settings.preset == "full" else "random")


def check_keys(expected: Iterable[str], found: Iterable[str], what: str) -> None:
    """Raise `WeightsError` naming missing and unexpected keys (a few of each) if the sets differ."""
    expected, found = set(expected), set(found)
    missing, unexpected = sorted(expected - found), sorted(found - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing (e.g. {', '.join(missing[:4])})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected (e.g. {', '.join(unexpected[:4])})")
        raise WeightsError(f"{what} do not match the architecture: {'; '.join(parts)}")


def load_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor], what: str) -> None:
    """`load_state_dict(strict=True)` with our error: key differences and shape mismatches by name."""
    check_keys(module.state_dict().keys(), state.keys(), what)
    own = module.state_dict()
    wrong = [f"{k} {tuple(v.shape)} vs {tuple(own[k].shape)}" for k, v in state.items() if own[k].shape != v.shape]
    if wrong:
        raise WeightsError(f"{what}: {len(wrong)} tensors have the wrong shape (e.g. {'; '.join(wrong[:3])})")
    module.load_state_dict(state, strict=True)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def state_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """A content hash of a state dict (for random or in-memory weights that have no file)."""
    digest = hashlib.sha256()
    for key in sorted(state):
        digest.update(key.encode())
        digest.update(state[key].detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def autocast_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for an `amp` setting: auto = bf16 on a GPU that computes bf16 natively
    (Ampere and later), else full precision (CPUs, older GPUs, where bf16 would be emulated)."""
    if amp == "off" or (amp == "auto" and not (device.type == "cuda" and _native_bf16(device))):
        return None
    return {"auto": torch.bfloat16, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def _native_bf16(device: torch.device) -> bool:
    with torch.cuda.device(device):
        return torch.cuda.is_bf16_supported(including_emulation=False)


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """On `device` (non-blocking from pinned memory); images (4-d) in channels_last, the layout in
    which embedding and adaptation keep the models' convolutions (what oneDNN and cuDNN prefer)."""
    tensor = tensor.to(device, non_blocking=True)
    return tensor.contiguous(memory_format=torch.channels_last) if tensor.dim() == 4 else tensor

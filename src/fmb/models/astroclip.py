"""AstroCLIP, re-implemented in plain PyTorch (the original is not packaged and needs dinov2/lightning).

Architecture (docs/astroclip_checkpoints.md has the evidence for every detail):
* image: AstroDINO, a DINOv2 ViT-L/12 at 144 px with LayerScale; AstroCLIP's image head runs
  patch embedding -> blocks -> norm (no class token, no position embedding) and pools the patch
  tokens with a one-query cross-attention head, then an MLP (not residual);
* spectrum: SpecFormer (pre-LN transformer over 20-pixel slices with 10-pixel overlap of the
  standardised spectrum, plus a leading token carrying its mean and scale), pooled by the same kind
  of head with a residual MLP;
* CLIP loss on the two 1024-d outputs with a learnable temperature applied as ``exp`` of its log
  (the original passed the log itself).

Module names mirror the released checkpoints (`polymathic-ai/astroclip` astroclip.ckpt,
`polymathic-ai/astrodino` astrodino.ckpt, `polymathic-ai/specformer` specformer.ckpt); the only key
renames are explicit in `_CHECKPOINT_KEYS`. Hub items are downloaded at `models.astroclip.revision`
and recorded with their commit (`fmb.models.hub`). Loading is strict per part. Adaptation trains the
heads and the temperature; ``finetune_backbone: spectrum`` also fine-tunes SpecFormer (the whole
spectrum encoder, as the original's ``--finetune-spectrum`` meant), ``both`` AstroDINO too.
"""

from __future__ import annotations

import functools
import math
import pickle
import re
import types
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F


from fmb.data.validate import Sample
from fmb.models import hub
from fmb.models.base import Encoder, Preprocessor, WeightsError, base_weights, check_keys
from fmb.models.inputs import object_ids, rgb_batch, spectrum_batch
from fmb.models.sections import AstroCLIPSection

DEFAULT_WEIGHTS = "polymathic-ai/astroclip"
CHECKPOINT_FILES = {"polymathic-ai/astroclip": "astroclip.ckpt", "polymathic-ai/astrodino": "astrodino.ckpt",
                     "polymathic-ai/specformer": "specformer.ckpt"}
SLICE, STEP = 20, 10


@dataclass(frozen=True)
class Sizes:
    image_dim: int = 1024
    image_depth: int = 24
    image_heads: int = 16
    patch: int = 12
    image_size: int = 144
    spectrum_dim: int = 768
    spectrum_depth: int = 6
    spectrum_heads: int = 6
    max_len: int = 800
    embed_dim: int = 1024
    head_heads: int = 4


PRESETS = {"full": Sizes(), "tiny": Sizes(64, 2, 2, 12, 48, 32, 2, 2, 800, 64, 2)}  # tiny keeps kdim patterns


# -- image backbone (DINOv2 ViT names) ----------------------------------------------------------------
class _Mlp(torch.nn.Module):
    def __init__(self, dim: int, hidden: int, first: str = "fc1", second: str = "fc2"):
        super().__init__()
        self.names = (first, second)
        setattr(self, first, torch.nn.Linear(dim, hidden))
        setattr(self, second, torch.nn.Linear(hidden, dim))

    def forward(self, x):
        return getattr(self, self.names[1])(F.gelu(getattr(self, self.names[0])(x)))


class _LayerScale(torch.nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.gamma = torch.nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        return x * self.gamma


class _Attention(torch.nn.Module):
    """Fused-qkv self-attention; parameter names configurable to match both backbones."""

    def __init__(self, dim: int, heads: int, qkv: str = "qkv", proj: str = "proj"):
        super().__init__()
        self.heads, self.names = heads, (qkv, proj)
        setattr(self, qkv, torch.nn.Linear(dim, 3 * dim))
        setattr(self, proj, torch.nn.Linear(dim, dim))

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = getattr(self, self.names[0])(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        y = F.scaled_dot_product_attention(q, k, v)
        return getattr(self, self.names[1])(y.transpose(1, 2).reshape(b, t, d))


class _VitBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.norm1, self.norm2 = torch.nn.LayerNorm(dim, eps=1e-6), torch.nn.LayerNorm(dim, eps=1e-6)
        self.attn, self.mlp = _Attention(dim, heads), _Mlp(dim, 4 * dim)
        self.ls1, self.ls2 = _LayerScale(dim), _LayerScale(dim)

    def forward(self, x):
        x = x + self.ls1(self.attn(self.norm1(x)))
        return x + self.ls2(self.mlp(self.norm2(x)))


class _PatchEmbed(torch.nn.Module):
    def __init__(self, patch: int, dim: int):
        super().__init__()
        self.proj = torch.nn.Conv2d(3, dim, patch, patch)

    def forward(self, x):
        return self.proj(x).flatten(2).transpose(1, 2)


class AstroDino(torch.nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        n_patches = (s.image_size // s.patch) ** 2
        self.patch_embed = _PatchEmbed(s.patch, s.image_dim)
        # stored in the checkpoints, unused by AstroCLIP's image head (kept so loading is strict)
        self.cls_token = torch.nn.Parameter(torch.zeros(1, 1, s.image_dim), requires_grad=False)
        self.pos_embed = torch.nn.Parameter(torch.zeros(1, 1 + n_patches, s.image_dim), requires_grad=False)
        self.mask_token = torch.nn.Parameter(torch.zeros(1, s.image_dim), requires_grad=False)
        self.blocks = torch.nn.ModuleList(_VitBlock(s.image_dim, s.image_heads) for _ in range(s.image_depth))
        self.norm = torch.nn.LayerNorm(s.image_dim, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed(x)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# -- spectrum backbone (SpecFormer names) --------------------------------------------------------------
class _SpecBlock(torch.nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.layernorm1, self.layernorm2 = torch.nn.LayerNorm(dim), torch.nn.LayerNorm(dim)
        self.attention = _Attention(dim, heads, "attention", "projection")
        self.mlp = _Mlp(dim, 4 * dim, "encoder", "decoder")

    def forward(self, x):
        x = x + self.attention(self.layernorm1(x))
        return x + self.mlp(self.layernorm2(x))


class SpecFormer(torch.nn.Module):
    def __init__(self, s: Sizes):
        super().__init__()
        self.data_embed = torch.nn.Linear(SLICE + 2, s.spectrum_dim)
        self.position_embed = torch.nn.Embedding(s.max_len, s.spectrum_dim)
        self.blocks = torch.nn.ModuleList(_SpecBlock(s.spectrum_dim, s.spectrum_heads) for _ in range(s.spectrum_depth))
        self.final_layernorm = torch.nn.LayerNorm(s.spectrum_dim)
        self.head = torch.nn.Linear(s.spectrum_dim, SLICE + 2)  # pre-training reconstruction head (unused)

    def forward(self, tokens):
        x = self.data_embed(tokens) + self.position_embed(torch.arange(tokens.shape[1], device=tokens.device))
        for block in self.blocks:
            x = block(x)
        return self.final_layernorm(x)


def slice_spectrum(flux: torch.Tensor) -> torch.Tensor:
    """SpecFormer input: standardised flux (std clipped at 0.2) cut into 20-px slices every 10 px
    (the original always drops the last start), 2 leading zero features per slice, and a first token
    carrying ((mean - 2) / 2, (std - 2) / 8). (B, L) -> (B, T, 22), T = 778 for L = 7781."""
    mean = flux.mean(1, keepdim=True)
    std = flux.std(1, keepdim=True).clamp_min(0.2)
    z = (flux - mean) / std
    starts = torch.arange(0, flux.shape[1] - STEP, STEP)[:-1]
    slices = z[:, starts[:, None] + torch.arange(SLICE)[None, :]]
    tokens = F.pad(slices, (2, 0, 1, 0))
    tokens[:, 0, 0] = ((mean - 2) / 2).squeeze(1)
    tokens[:, 0, 1] = ((std - 2) / 8).squeeze(1)
    return tokens


# -- heads -------------------------------------------------------------------------------------------
class _CrossAttentionHead(torch.nn.Module):
    def __init__(self, dim: int, kdim: int, heads: int):
        super().__init__()
        self.query = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.multihead_attn = torch.nn.MultiheadAttention(dim, heads, kdim=kdim, vdim=kdim, batch_first=True)
        self.layernorm = torch.nn.LayerNorm(dim)
        self.dropout = torch.nn.Dropout(0.1)

    def forward(self, tokens):
        pooled = self.multihead_attn(self.query.expand(len(tokens), -1, -1), tokens, tokens, need_weights=False)[0]
        return self.layernorm(self.dropout(pooled))


class _Head(torch.nn.Module):
    def __init__(self, backbone: torch.nn.Module, kdim: int, s: Sizes, residual: bool):
        super().__init__()
        self.backbone, self.residual = backbone, residual
        self.tune_backbone = False  # the backbone runs without gradient unless it is adapted
        self.cross_attention = _CrossAttentionHead(s.embed_dim, kdim, s.head_heads)
        self.mlp = torch.nn.Sequential()
        self.mlp.encoder = torch.nn.Linear(s.embed_dim, 4 * s.embed_dim)
        self.mlp.gelu = torch.nn.GELU()
        self.mlp.decoder = torch.nn.Linear(4 * s.embed_dim, s.embed_dim)
        self.mlp.dropout = torch.nn.Dropout(0.1)

    def forward(self, x):
        with torch.set_grad_enabled(self.tune_backbone and torch.is_grad_enabled()):
            tokens = self.backbone(x)
        y = self.cross_attention(tokens)
        return (y + self.mlp(y) if self.residual else self.mlp(y)).squeeze(1)


# -- preprocessing and the encoder ---------------------------------------------------------------------
class AstroCLIPPreprocessor(Preprocessor):
    model = "astroclip"
    needs = frozenset({"rgb", "spectrum"})

    def __call__(self, samples: list[Sample]) -> dict[str, torch.Tensor]:
        spectra = spectrum_batch(samples)
        return {"object_id": object_ids(samples), "image": rgb_batch(samples, self.image_size),
                "spectrum": slice_spectrum(spectra["flux"].double()).float()}


class AstroCLIPEncoder(Encoder):
    name = "astroclip"
    label = "AstroCLIP"
    aligned = True
    section = AstroCLIPSection

    def __init__(self, settings: AstroCLIPSection, sizes: Sizes, source: str):
        super().__init__()
        self.settings, self.sizes, self.source = settings, sizes, source
        with torch.random.fork_rng():  # random weights are still reproducible ones
            torch.manual_seed(0)
            self.image_encoder = _Head(AstroDino(sizes), sizes.image_dim, sizes, residual=False)
            self.spectrum_encoder = _Head(SpecFormer(sizes), sizes.spectrum_dim, sizes, residual=True)
        self.log_scale = torch.nn.Parameter(torch.tensor(math.log(15.5)), requires_grad=settings.learnable_scale)
        for backbone in (self.image_encoder.backbone, self.spectrum_encoder.backbone):
            backbone.requires_grad_(False)
        for head in self._tuned_backbones():
            head.tune_backbone = True
            for name, p in head.backbone.named_parameters():
                p.requires_grad_(name not in _UNUSED_BACKBONE_PARAMETERS)
        self.preprocessor = AstroCLIPPreprocessor(sizes.image_size)

    @classmethod
    def load(cls, settings: AstroCLIPSection) -> "AstroCLIPEncoder":
        sizes = PRESETS[settings.preset]
        if settings.preset == "full" and settings.image_size != sizes.image_size:
            sizes = Sizes(image_size=settings.image_size)
        weights = base_weights(settings, DEFAULT_WEIGHTS)
        files = [checkpoint_file(item, settings.revision) for item in _items(weights)]  # hub items: each at its commit
        encoder = cls(settings, sizes, ",".join(source for _, source in files) if files else weights)
        for path, source in files:
            encoder.load_checkpoint(read_checkpoint(path), source)
        return encoder

    @classmethod
    def hub_files(cls, settings: AstroCLIPSection) -> list[hub.HubFile]:
        """The checkpoints `load` reads; for the released weights all three (astroclip.ckpt loads by
        default, astrodino.ckpt and specformer.ckpt are the backbones a run can start from instead)."""
        items = list(CHECKPOINT_FILES) if settings.weights is None and settings.preset == "full" else \
            _items(base_weights(settings, DEFAULT_WEIGHTS))
        return [item for item in map(_hub_file, items) if item is not None]

    def load_checkpoint(self, checkpoint: Mapping, name: str) -> None:
        """Load an astroclip, astrodino or specformer checkpoint (recognised by content), strictly."""
        kind, state = _checkpoint_parts(checkpoint, name)
        prefix = _CHECKPOINT_KEYS[kind]["into"]
        mapped = {}
        for key, value in state.items():
            for pattern, replacement in _CHECKPOINT_KEYS[kind]["rename"]:
                key = re.sub(pattern, replacement, key)
            if not any(re.match(p, key) for p in _CHECKPOINT_KEYS[kind]["ignore"]):
                mapped[prefix + key] = value
        own = {k: v for k, v in self.state_dict().items() if k.startswith(prefix) and k != "log_scale"}
        if kind == "astroclip":
            mapped.setdefault("log_scale", self.log_scale.detach().clone())  # absent unless it was learnable
            own["log_scale"] = self.log_scale
        check_keys(own, mapped, f"astroclip weights from {name} ({kind})")
        wrong = [k for k, v in mapped.items() if own[k].shape != v.shape]
        if wrong:
            raise WeightsError(f"astroclip weights from {name}: wrong shapes for {wrong[:3]} (preset {self.settings.preset}?)")
        self.load_state_dict(mapped, strict=False)  # every key of this part checked above

    # -- encoder interface ------------------------------------------------------------------------------
    def embed(self, batch: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        image = self.image_encoder(batch["image"])
        spectrum = self.spectrum_encoder(batch["spectrum"])
        joint = F.normalize(F.normalize(image, dim=-1) + F.normalize(spectrum, dim=-1), dim=-1)
        return {"image": image, "spectrum": spectrum, "joint": joint}

    def training_loss(self, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
        out = self.embed(batch)
        return clip_loss(out["image"], out["spectrum"], self.log_scale)

    def _tuned_backbones(self) -> list[_Head]:
        """The heads whose backbone adapts too (`finetune_backbone`)."""
        return {"none": [], "spectrum": [self.spectrum_encoder],
                "both": [self.spectrum_encoder, self.image_encoder]}[self.settings.finetune_backbone]

    def trainable_parameters(self) -> list[torch.nn.Parameter]:
        heads = [self.image_encoder] + ([self.spectrum_encoder] if self.settings.finetune_spectrum else [])
        params = [p for head in heads for name, p in head.named_parameters() if not name.startswith("backbone.")]
        params += [p for head in self._tuned_backbones() for p in head.backbone.parameters() if p.requires_grad]
        return params + ([self.log_scale] if self.settings.learnable_scale else [])

    def inference_blocks(self) -> list[torch.nn.Module]:
        return [*self.image_encoder.backbone.blocks, *self.spectrum_encoder.backbone.blocks]

    def describe(self) -> dict:
        s = self.sizes
        return {
            "model": "astroclip", "weights": self.source,
            "architecture": f"ViT {s.image_depth}x{s.image_dim}/{s.patch} @ {s.image_size}px + SpecFormer "
            f"{s.spectrum_depth}x{s.spectrum_dim}, cross-attention heads -> {s.embed_dim}",
            "preprocessing": f"RGB /255 resized to {s.image_size}px; spectrum standardised, 20-px slices every 10 px",
            "pooling": "one-query cross-attention heads; joint = normalise(normalise(image) + normalise(spectrum))",
            "layer": "head outputs",
            "dims": {"image": s.embed_dim, "spectrum": s.embed_dim, "joint": s.embed_dim},
        }


def clip_loss(image: torch.Tensor, spectrum: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """Symmetric InfoNCE; the temperature multiplier is exp(log_scale), capped at 100."""
    zi, zs = F.normalize(image, dim=-1, eps=1e-3), F.normalize(spectrum, dim=-1, eps=1e-3)
    logits = log_scale.clamp(max=math.log(100.0)).exp() * zi @ zs.T
    target = torch.arange(len(zi), device=zi.device)
    return (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2


#: Backbone parameters in the checkpoints that AstroCLIP's forward never uses: never adapted.
_UNUSED_BACKBONE_PARAMETERS = {"cls_token", "pos_embed", "mask_token", "head.weight", "head.bias"}


# -- checkpoints -----------------------------------------------------------------------------------------
_CHUNKED_BLOCKS = (r"blocks\.\d+\.(\d+)\.", r"blocks.\1.")  # DINOv2 block_chunks: blocks.<chunk>.<i>. -> blocks.<i>.
_CHECKPOINT_KEYS = {
    "astroclip": {"into": "", "rename": [(r"^(image_encoder\.backbone\.)" + _CHUNKED_BLOCKS[0], r"\1blocks.\2."),
                                           (r"^logit_scale$", "log_scale")], "ignore": []},
    "astrodino": {"into": "image_encoder.backbone.", "rename": [(r"^backbone\.", ""), (r"^" + _CHUNKED_BLOCKS[0], _CHUNKED_BLOCKS[1])],
                  "ignore": [r"^dino_head\.", r"^ibot_head\."]},
    "specformer": {"into": "spectrum_encoder.backbone.", "rename": [], "ignore": []},
}


def _checkpoint_parts(checkpoint: Mapping, name: str) -> tuple[str, dict]:
    if "teacher" in checkpoint:
        return "astrodino", dict(checkpoint["teacher"])
    state = checkpoint.get("state_dict", checkpoint)
    if any(k.startswith("image_encoder.") for k in state):
        return "astroclip", dict(state)
    if "data_embed.weight" in state:
        return "specformer", dict(state)
    raise WeightsError(f"{name} is not an astroclip, astrodino or specformer checkpoint")


class _Stub(dict):
    """Stands in, while unpickling, for every global a checkpoint names beyond torch's tensor
    rebuilders (Lightning's, dinov2's and astroclip's classes, and anything a planted file names,
    such as os.system): we only read tensors from `state_dict`, so none of them is ever imported
    or called, and opening a checkpoint runs no code."""

    def __init__(self, *args, **kwargs):
        super().__init__()

    def __setstate__(self, state):
        self.__dict__["_state"] = state


class _TensorsOnlyUnpickler(pickle.Unpickler):
    """Resolves only the globals torch's own `weights_only` loader allows (tensor and storage
    rebuilders, dtypes, OrderedDict, ...); every other name becomes `_Stub`."""

    def find_class(self, module, name):
        allowed = _tensor_globals().get(f"{module}.{name}")
        return allowed if allowed is not None else _Stub


@functools.cache
def _tensor_globals() -> dict:
    from torch import _weights_only_unpickler  # torch's allow-list of the weights_only loader (torch pinned)

    return _weights_only_unpickler._get_allowed_globals()


_PICKLE = types.SimpleNamespace(Unpickler=_TensorsOnlyUnpickler, load=pickle.load, __name__="fmb_tensors_only_pickle")


def checkpoint_file(weights: str, revision: str | None) -> tuple[Path, str]:
    """(path, source) of a local file, or of a hub item (`polymathic-ai/astroclip` etc., or
    `repo:filename`) downloaded at `revision`, recorded as ``item@commit``."""
    return hub.fetch(weights, _hub_file(weights), revision, "astroclip weights")


def _items(weights: str) -> list[str]:
    """The comma-separated items of `models.astroclip.weights` (none for random weights)."""
    return [] if weights == "random" else [item.strip() for item in weights.split(",")]


def _hub_file(item: str) -> hub.HubFile | None:
    """The hub file a weights item names (``repo`` of a released checkpoint, or ``repo:filename``);
    None for a local file."""
    if Path(item).expanduser().is_file():
        return None
    repo, _, filename = item.partition(":")
    filename = filename or CHECKPOINT_FILES.get(repo)
    if filename is None:
        raise WeightsError(f"astroclip weights {item!r}: not a file; for other hub repos write repo:filename")
    return hub.HubFile(repo, filename)


def read_checkpoint(path: str | Path) -> Mapping:
    """A checkpoint file's tensors, every other object a stub (`_TensorsOnlyUnpickler`), so that
    reading it never runs code; a file that is not a PyTorch checkpoint is one line naming it."""
    try:
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_PICKLE)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError) as error:
        raise WeightsError(f"{path}: not a readable astroclip checkpoint ({type(error).__name__}: "
                           f"{(str(error).splitlines() or [''])[0][:160]}); give a checkpoint file, or a hub item") from None

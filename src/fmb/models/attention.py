"""Attention through `torch.nn.functional.scaled_dot_product_attention`, swapped in at load time.

AION's 4M blocks (`aion.fourm.fm_utils`: ``Attention``, ``CrossAttention``, ``NormAttention``,
``NormCrossAttention``) compute ``q @ k.T``, a softmax and ``@ v`` by hand, materialising the
(B, heads, N, N) matrix. `use_sdpa` replaces every such module of a model by `SdpaAttention`, which
holds the very same projection and norm modules (so the state dict, its keys and its hash are
unchanged) and computes the same function through SDPA (flash / memory-efficient kernels on GPUs,
a fused kernel on CPUs):

* masks: the package fills masked logits (mask ``True``) with ``-finfo(dtype).max``, not ``-inf``,
  so a query whose every key is masked attends uniformly to all of them rather than giving NaN. The
  same additive mask reproduces this exactly: a finite logit plus ``-max`` rounds to ``-max``.
* ``softmax1`` (``allow_zero_attn``: exp(x_i) / (1 + sum_j exp(x_j))) is the softmax over the logits
  plus one more logit of 0, that extra column dropped. Appending a key of zeros (logit q.0 = 0, never
  masked, as the package pads after masking) with a value of zeros is exactly that.

AstroPT's GPT (``astropt.model.SelfAttention``, causal) already calls SDPA, and fmb's own AstroCLIP
(`fmb.models.astroclip`) uses SDPA for its blocks and `torch.nn.MultiheadAttention` (SDPA inside)
for its pooling heads: neither needs a swap.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class SdpaAttention(torch.nn.Module):
    """A drop-in for one of AION's hand-written attention modules (self- or cross-attention, with or
    without q/k norms), keeping its submodules and computing attention through SDPA."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.num_heads, self.scale = original.num_heads, original.scale
        self.allow_zero_attn = original.allow_zero_attn
        self.cross = hasattr(original, "kv")
        if self.cross:
            self.q, self.kv = original.q, original.kv
        else:
            self.qkv = original.qkv
        self.q_norm, self.k_norm = getattr(original, "q_norm", None), getattr(original, "k_norm", None)
        self.attn_drop, self.proj, self.proj_drop = original.attn_drop, original.proj, original.proj_drop

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, mask: torch.Tensor | None = None):
        if not self.cross:  # self-attention is called as (x, mask)
            mask = context if context is not None else mask
            context = x
        b, n, c = x.shape
        heads = self.num_heads
        if self.cross:
            q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
            k, v = self.kv(context).reshape(b, context.shape[1], 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y = attend(q, k, v, mask, self.scale, self.allow_zero_attn, self.attn_drop.p if self.training else 0.0)
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, -1)))


def attend(q, k, v, mask: torch.Tensor | None, scale: float, zero_attn: bool, dropout_p: float = 0.0) -> torch.Tensor:
    """softmax(q k^T * scale, masked as AION masks) @ v through SDPA; `mask` (B, 1 or N, M), True = masked;
    `zero_attn`: softmax1 (an extra zero logit) instead of the softmax."""
    bias = None
    if mask is not None:
        bias = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill_(mask, -torch.finfo(q.dtype).max)
        bias = bias.unsqueeze(1)  # over heads
    if zero_attn:
        k, v = F.pad(k, (0, 0, 0, 1)), F.pad(v, (0, 0, 0, 1))  # one more key and value, both zero
        bias = None if bias is None else F.pad(bias, (0, 1))  # never masked
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout_p, scale=scale)


def _hand_written_classes() -> tuple[type, ...]:
    from aion.fourm import fm_utils

    return fm_utils.Attention, fm_utils.CrossAttention, fm_utils.NormAttention, fm_utils.NormCrossAttention


def use_sdpa(model: torch.nn.Module) -> int:
    """Replace, in place, each of AION's hand-written attention modules in `model` by `SdpaAttention`;
    returns how many were swapped. Modules of other classes (a package version that already uses SDPA,
    or a subclass with another forward) are left as they are."""
    classes = _hand_written_classes()
    swaps = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) in classes]
    for parent, name, child in swaps:
        setattr(parent, name, SdpaAttention(child))
    return len(swaps)

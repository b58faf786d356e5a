"""Attention through `torch.nn.functional.scaled_dot_product_attention`, swapped in at load time.

AION's 4M blocks (`aion.fourm.fm_utils`: ``Attention``, ``CrossAttention``, ``NormAttention``,
``NormCrossAttention``) compute ``q @ k.T``, a softmax and ``@ v`` by hand, materialising the
(B, heads, N, N) matrix. `use_sdpa` replaces every such module of a model by `SdpaAttention` or
`SdpaCrossAttention`, which hold the very same projection and norm modules (so the state dict, its
keys and its hash are unchanged) and compute the same function through SDPA (flash /
memory-efficient kernels on GPUs, a fused kernel on CPUs):

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


class _Sdpa(torch.nn.Module):
    """What self- and cross-attention share: the package module's norms, dropouts and output
    projection (the very modules, so the state dict is unchanged), and attention through SDPA."""

    def __init__(self, original: torch.nn.Module):
        super().__init__()
        self.num_heads, self.scale, self.allow_zero_attn = original.num_heads, original.scale, original.allow_zero_attn
        self.q_norm, self.k_norm = getattr(original, "q_norm", None), getattr(original, "k_norm", None)  # Norm* only
        self.attn_drop, self.proj, self.proj_drop = original.attn_drop, original.proj, original.proj_drop

    def _attended(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """(B, heads, N, head_dim) queries, keys, values -> the projected (B, N, C) output."""
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        y = attend(q, k, v, mask, self.scale, self.allow_zero_attn, self.attn_drop.p if self.training else 0.0)
        b, _, n, _ = y.shape
        return self.proj_drop(self.proj(y.transpose(1, 2).reshape(b, n, -1)))


class SdpaAttention(_Sdpa):
    """A drop-in for ``Attention`` and ``NormAttention`` (self-attention with a fused qkv projection)."""

    def __init__(self, original: torch.nn.Module):
        super().__init__(original)
        self.qkv = original.qkv

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self._attended(q, k, v, mask)


class SdpaCrossAttention(_Sdpa):
    """A drop-in for ``CrossAttention`` and ``NormCrossAttention`` (queries from x, keys and values from context)."""

    def __init__(self, original: torch.nn.Module):
        super().__init__(original)
        self.q, self.kv = original.q, original.kv

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        b, n, c = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, n, heads, c // heads).transpose(1, 2)
        k, v = self.kv(context).reshape(b, context.shape[1], 2, heads, c // heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self._attended(q, k, v, mask)


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


def _swaps() -> dict[type, type]:
    """Each of AION's hand-written attention classes -> its SDPA drop-in."""
    from aion.fourm import fm_utils

    return {fm_utils.Attention: SdpaAttention, fm_utils.NormAttention: SdpaAttention,
            fm_utils.CrossAttention: SdpaCrossAttention, fm_utils.NormCrossAttention: SdpaCrossAttention}


def use_sdpa(model: torch.nn.Module) -> int:
    """Replace, in place, each of AION's hand-written attention modules in `model` by its SDPA drop-in;
    returns how many were swapped. Modules of other classes (a package version that already uses SDPA,
    or a subclass with another forward) are left as they are."""
    return swap_modules(model, _swaps())


def swap_modules(model: torch.nn.Module, swaps: dict[type, type]) -> int:
    """Replace, in place, every submodule whose class (exactly) is a key of `swaps` by that value built
    from it; returns how many."""
    found = [(parent, name, child) for parent in model.modules() for name, child in parent.named_children()
             if type(child) in swaps]
    for parent, name, child in found:
        setattr(parent, name, swaps[type(child)](child))
    return len(found)

"""Causal self-attention: MHA, GQA and MQA are one module set by ``n_kv_heads``
(``n_heads``, a divisor of it, or 1); ``flash`` is the same module restricted to fused kernels.

Shapes: x ``(B, T, dim)``; q ``(B, H, T, hd)``; k, v ``(B, KV, S, hd)`` with ``S = start + T``
when a cache is used. Which kernel computes the attention is ``kernels.attend``'s choice; none
materialises repeated k/v for grouped heads.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch.nn as nn
from torch import Tensor
from torch.nn.attention import sdpa_kernel

from . import kernels
from .cache import LayerCache
from .kernels import Linear, attend
from .position import apply_rope


@dataclass
class AttnContext:
    """What every layer needs to know about the positions of one forward call."""

    start: int  # absolute position of the first query token
    rope: tuple[Tensor, Tensor] | None  # (cos, sin) for the query positions, or None
    mask: Tensor | None  # bool (True = attend) or additive float, broadcastable to (B, H, T, S)
    is_causal: bool  # let SDPA apply the causal mask itself (only when there is no explicit mask)
    continuing: bool = False  # this call extends a cached sequence (start > 0)
    kernels: str | None = None  # kernels.DECODE / COMPILED_DECODE inside kernels.decode_kernels


class Attention(nn.Module):
    """Multi-head attention with ``n_kv_heads`` key/value heads (MHA / GQA / MQA).

    ``kernels.attend`` picks the kernel; for SDPA the backend is chosen by PyTorch (fused flash
    or memory-efficient kernels when the inputs allow, the math kernel otherwise).
    """

    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = Linear(cfg.dim, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = Linear(self.n_heads * self.head_dim, cfg.dim, bias=cfg.bias)
        self.dropout = cfg.dropout

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        shape = (batch, self.n_kv_heads, max_len, self.head_dim)
        return {"k": shape, "v": shape}

    def forward(self, x: Tensor, ctx: AttnContext, cache: LayerCache | None = None) -> Tensor:
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)
        k = self.k_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)  # (B, KV, T, hd)
        v = self.v_proj(x).view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if ctx.rope is not None:
            cos, sin = ctx.rope
            q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k, v = cache.update(ctx.start, k, v)  # (B, KV, S, hd)
        y = self._sdpa(q, k, v, ctx)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, self.n_heads * self.head_dim))

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        return attend(q, k, v, ctx, self.dropout if self.training else 0.0)


class FlashAttention(Attention):
    """``attn="flash"``: the same attention, restricted to PyTorch's fused SDPA kernels.

    On CUDA this is FlashAttention-2 for fp16/bf16 inputs without an explicit mask, and the
    fused memory-efficient kernel otherwise (fp32 inputs, ALiBi or other additive masks).
    On CPU it is PyTorch's fused flash-attention CPU kernel (fp32 and bf16, masks supported).
    If no fused kernel accepts the inputs, PyTorch raises instead of silently using the
    unfused math kernel that ``mha``/``gqa``/``mqa`` may fall back to.

    One exception: PyTorch's fused CPU kernels have no attention dropout. A CPU training
    forward with ``dropout > 0`` therefore runs the unfused kernel (with a one-time warning)
    rather than silently dropping the regularisation; set ``dropout=0`` to stay fused.
    """

    _warned = False

    def _sdpa(self, q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext) -> Tensor:
        if self.training and self.dropout > 0 and q.device.type == "cpu":
            if not FlashAttention._warned:
                warnings.warn("attn='flash': the fused CPU attention kernels do not support dropout; "
                              "training forwards use the unfused kernel. Set dropout=0 to keep the fused one.",
                              stacklevel=2)
                FlashAttention._warned = True
            return super()._sdpa(q, k, v, ctx)
        with sdpa_kernel(kernels.FUSED):
            return attend(q, k, v, ctx, self.dropout if self.training else 0.0, fused_only=True)


# The README's class names; all three are the one Attention module, set by n_kv_heads.
MultiHeadAttention = GroupedQueryAttention = MultiQueryAttention = Attention

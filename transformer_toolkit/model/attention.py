"""Causal self-attention: MHA, GQA and MQA are one module set by ``n_kv_heads``
(``n_heads``, a divisor of it, or 1); ``flash`` is the same module restricted to fused kernels.

Shapes: x ``(B, T, dim)``; q ``(B, H, T, hd)``; k, v ``(B, KV, S, hd)`` with ``S = start + T``
when a cache is used. Grouped heads go to ``scaled_dot_product_attention(enable_gqa=True)``
(or, for CPU training of short sequences, to ``_matmul_attention``); neither materialises
repeated k/v.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend, sdpa_kernel

from .cache import LayerCache
from .position import apply_rope


@dataclass
class AttnContext:
    """What every layer needs to know about the positions of one forward call."""

    start: int  # absolute position of the first query token
    rope: tuple[Tensor, Tensor] | None  # (cos, sin) for the query positions, or None
    mask: Tensor | None  # bool (True = attend) or additive float, broadcastable to (B, H, T, S)
    is_causal: bool  # let SDPA apply the causal mask itself (only when there is no explicit mask)
    continuing: bool = False  # this call extends a cached sequence (start > 0)


def _fp32_pays(q: Tensor) -> bool:
    """Whether a CPU attention call in bf16 or fp16 should run the fused kernel in fp32 instead.

    - One query per row (a decode step): PyTorch's fused CPU kernel is slow for a single
      half-precision query, and the fp32 kernel on upcast inputs is faster at every cache length.
      Measured on 2 cores, one layer (6 heads / 3 kv heads of 64), 272 cached keys: bf16 99 us
      against 36 us in fp32 at batch 1, 749 against 144 us at batch 8 (fp16 288 against 47 us);
      even at 16 keys. From 4 queries on, the half-precision kernel is the faster again.
    - Training of short sequences in bf16 (the fused kernel's bf16 backward is the slower for
      short blocks and catches up with length; reached only where ``_matmul_attention`` does not
      run, e.g. ``attn="flash"``). Measured on 2 cores, whole training steps, bf16 autocast: at
      T=128 (head_dim 64) fp32 attention gives 1.06x the step's tokens/s; at 256 the two are
      even (GQA) or bf16 is 1.05x (MHA); at 512 bf16 is 1.03-1.09x and at 1024 1.03x. With
      head_dim 32 the fp32 kernel is the faster up to T=512 (attention alone, forward +
      backward: bf16 at 0.80x, 0.97x of its speed at T=256, 512, and 1.25x at 1024).
    """
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    if q.shape[2] == 1:
        return True
    return q.dtype == torch.bfloat16 and q.requires_grad and q.shape[2] <= (512 if q.shape[3] <= 32 else 128)


def attend(q: Tensor, k: Tensor, v: Tensor, ctx: AttnContext, dropout_p: float = 0.0,
           scale: float | None = None, fused_only: bool = False) -> Tensor:
    """Scaled dot-product attention of q ``(B, H, T, d)`` over k, v ``(B, KV, S, d)``.

    The kernel is picked by what runs fastest where it matters:

    - CPU training of short sequences (``_matmul_pays``) runs ``_matmul_attention``: two
      batched matmuls around a softmax, about 2x faster than PyTorch's fused CPU kernel there;
    - otherwise CPU decode steps in bf16/fp16 and CPU bf16 training of short sequences run the
      fused kernel in fp32 (``_fp32_pays``): its half-precision kernel is the slower there;
    - everything else goes to ``F.scaled_dot_product_attention`` as it is.

    ``fused_only`` (``attn="flash"``) skips the first choice, so only fused kernels run.
    """
    if q.shape[2] == 1 and q.device.type == "cpu" and torch.compiler.is_compiling() and dropout_p == 0.0:
        return _one_query(q, k, v, ctx.mask, scale)
    if not fused_only and _matmul_pays(q, k, v):
        return _matmul_attention(q, k, v, ctx.mask, ctx.is_causal, scale, dropout_p)
    if _fp32_pays(q):
        mask = ctx.mask if ctx.mask is None or ctx.mask.dtype == torch.bool else ctx.mask.float()
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
            y = _sdpa(q.float(), k.float(), v.float(), mask, ctx.is_causal, scale, dropout_p)
        return y.to(q.dtype)
    return _sdpa(q, k, v, ctx.mask, ctx.is_causal, scale, dropout_p)


# Longest key length at which CPU training runs _matmul_attention, per dtype. Measured on 2 cores,
# attention alone, forward + backward, 2048 tokens per batch, head_dim 32 and 64, GQA and MHA:
# bf16 1.7-3.3x faster than the better fused kernel (bf16 or fp32) at 64..512 keys; fp32
# 1.04-1.57x at 64..128 keys and 0.87-0.98x from 256 on.
MATMUL_ATTENTION_MAX_KEYS = {torch.bfloat16: 512, torch.float32: 128}


def _matmul_pays(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether this call is CPU training over few enough keys for ``_matmul_attention``."""
    limit = MATMUL_ATTENTION_MAX_KEYS.get(q.dtype, 0)
    return (q.device.type == "cpu" and k.shape[2] <= limit and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad))


def _matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                      scale: float | None, dropout_p: float) -> Tensor:
    """Attention as ``softmax(q k^T * scale + mask) @ v`` with the ``(T, S)`` scores in memory.

    For short sequences on CPU this beats the fused kernel, whose backward walks small blocks:
    here the work is two batched matmuls forward and four backward, and the softmax in between.
    The ``G = H / KV`` query heads that share a key head are stacked as rows of one product, so
    grouped keys are never repeated. Everything runs in q's dtype (in bf16 the softmax
    accumulates in fp32 and the scores are rounded to bf16 first, as in Megatron-LM's and HF's
    unfused attention). ``mask``: None, bool (True = attend) or additive, broadcastable to
    ``(B, H, T, S)``; ``is_causal`` (with no mask) hides the keys after each query, T == S.
    Every query must see at least one key (true of every mask the model builds).
    """
    B, H, T, d = q.shape
    KV, S = k.shape[1], k.shape[2]
    G = H // KV
    with torch.autocast(q.device.type, enabled=False):  # keep one dtype: no casts around each op
        k, v = k.to(q.dtype), v.to(q.dtype)
        q = q * (scale if scale is not None else d ** -0.5)  # scale the smaller operand
        s = (q.reshape(B, KV, G * T, d) @ k.transpose(-1, -2)).view(B, H, T, S)
        if mask is not None:
            s = s + (torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask).to(s.dtype)
        elif is_causal:
            s = s + torch.full((T, S), float("-inf"), dtype=s.dtype, device=s.device).triu_(1)
        p = torch.softmax(s, dim=-1)
        if dropout_p > 0.0:
            p = F.dropout(p, dropout_p)
        return (p.view(B, KV, G * T, S) @ v).view(B, H, T, v.shape[-1])


def _one_query(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """Attention of one new token per row (a decode step) as two small matmuls, in float32,
    for compiled decode steps on CPU (``generation.CompiledStep``).

    PyTorch's fused CPU kernel is built for blocks of queries; for a single bf16 query over
    512 cached keys it costs over 200 us per layer, more than the layer's weights take to
    stream, and torch.compile cannot fuse into it. Here the ``G = H / KV`` query heads that
    share a key head form the rows of one ``(G, d) @ (d, S)`` product, so grouped keys are never
    repeated (``_matmul_attention`` with one query row per head, in float32). Measured on the
    README's Shakespeare shape, 256 new tokens at batch 1: compiled bf16 decoding 1.23x faster
    than with the fused kernel; fp32 and eager decoding unchanged (within noise), so eager steps
    keep the fused kernel.
    ``mask``: None, bool ``(..., 1, S)`` (True = attend) or additive, broadcastable to
    ``(B, H, 1, S)``."""
    return _matmul_attention(q.float(), k.float(), v.float(), mask, False, scale, 0.0).to(q.dtype)


def _sdpa(q, k, v, mask, is_causal, scale, dropout_p) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          dropout_p=dropout_p, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    """Multi-head attention with ``n_kv_heads`` key/value heads (MHA / GQA / MQA).

    The SDPA backend is chosen by PyTorch (fused flash or memory-efficient kernels when the
    inputs allow, the math kernel otherwise).
    """

    def __init__(self, cfg):
        super().__init__()
        self.n_heads, self.n_kv_heads, self.head_dim = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        qkv_bias = cfg.bias or cfg.qkv_bias
        self.q_proj = nn.Linear(cfg.dim, self.n_heads * self.head_dim, bias=qkv_bias)
        self.k_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.v_proj = nn.Linear(cfg.dim, self.n_kv_heads * self.head_dim, bias=qkv_bias)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.dim, bias=cfg.bias)
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


# fused kernels only: never the unfused math path
_FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


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
        with sdpa_kernel(_FUSED):
            return attend(q, k, v, ctx, self.dropout if self.training else 0.0, fused_only=True)


# The README's class names; all three are the one Attention module, set by n_kv_heads.
MultiHeadAttention = GroupedQueryAttention = MultiQueryAttention = Attention

"""Multi-head latent attention, as in DeepSeek-V2 (https://arxiv.org/abs/2405.04434).

Keys and values are compressed into one small latent per token, ``c = norm(W_dkv x)`` of width
``latent_dim``; every head expands it, ``k_nope = W_uk c`` and ``v = W_uv c``. RoPE cannot be
applied to keys that are only stored compressed, so position goes into a separate, decoupled
rope key ``k_rope = rope(W_kr x)`` of width ``rope_head_dim``, shared by all heads; queries are
split the same way into a no-rope and a rope part. The cache holds only ``c`` and ``k_rope``:
``latent_dim + rope_head_dim`` numbers per token and layer, whatever the number of heads.

Decoding never expands the cached latent: ``W_uk`` is absorbed into the query
(``q_nope . (W_uk c) = (W_uk^T q_nope) . c``) and ``W_uv`` is applied after attention, so the
step is a one-kv-head attention over the latent itself.

Without RoPE (``pos_enc`` other than "rope") there is no rope part (``rope_head_dim = 0``).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

from .attention import AttnContext
from .cache import LayerCache
from .kernels import Linear, attend
from .norm import RMSNorm
from .position import apply_rope


class MLAttention(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        H, hd, r, L = cfg.n_heads, cfg.head_dim, cfg.rope_head_dim, cfg.latent_dim
        self.n_heads, self.head_dim, self.rope_dim, self.latent_dim = H, hd, r, L
        if cfg.q_latent_dim:
            self.q_a_proj = Linear(cfg.dim, cfg.q_latent_dim, bias=False)
            self.q_a_norm = RMSNorm(cfg.q_latent_dim, cfg.eps)
            self.q_b_proj = Linear(cfg.q_latent_dim, H * (hd + r), bias=False)
        else:
            self.q_proj = Linear(cfg.dim, H * (hd + r), bias=False)
        self.kv_a_proj = Linear(cfg.dim, L + r, bias=False)  # latent and the shared rope key
        self.kv_a_norm = RMSNorm(L, cfg.eps)
        self.kv_b_proj = Linear(L, H * 2 * hd, bias=False)  # per head: k_nope then v
        self.o_proj = Linear(H * hd, cfg.dim, bias=cfg.bias)
        self.scale = 1.0 / math.sqrt(hd + r)
        self.dropout = cfg.dropout

    def cache_shapes(self, batch: int, max_len: int) -> dict[str, tuple[int, ...]]:
        return {"latent": (batch, max_len, self.latent_dim), "k_rope": (batch, max_len, self.rope_dim)}

    def _dropout_p(self) -> float:
        return self.dropout if self.training else 0.0

    def _queries(self, x: Tensor) -> Tensor:
        if hasattr(self, "q_proj"):
            return self.q_proj(x)
        return self.q_b_proj(self.q_a_norm(self.q_a_proj(x)))

    def forward(self, x: Tensor, ctx: AttnContext, cache: LayerCache | None = None) -> Tensor:
        B, T, _ = x.shape
        H, hd, r, L = self.n_heads, self.head_dim, self.rope_dim, self.latent_dim
        q = self._queries(x).view(B, T, H, hd + r).transpose(1, 2)  # (B, H, T, hd + r)
        q_nope, q_rope = q.split([hd, r], dim=-1)
        c, k_rope = self.kv_a_proj(x).split([L, r], dim=-1)  # (B, T, L), (B, T, r)
        c = self.kv_a_norm(c)
        if r:
            cos, sin = ctx.rope
            q_rope = apply_rope(q_rope, cos, sin)
            k_rope = apply_rope(k_rope.unsqueeze(1), cos, sin).squeeze(1)
        if cache is None:
            y = self._expanded(q_nope, q_rope, c, k_rope, ctx)
        else:
            c, k_rope = cache.update(ctx.start, c, k_rope)  # (B, S, L), (B, S, r)
            y = self._absorbed(q_nope, q_rope, c, k_rope, ctx)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * hd))

    def _expanded(self, q_nope, q_rope, c, k_rope, ctx) -> Tensor:
        """Training path: expand the latent into per-head keys and values."""
        B, S, _ = c.shape
        H, hd = self.n_heads, self.head_dim
        k_nope, v = self.kv_b_proj(c).view(B, S, H, 2 * hd).transpose(1, 2).split([hd, hd], dim=-1)
        q = torch.cat([q_nope, q_rope], dim=-1)
        k = torch.cat([k_nope, k_rope.unsqueeze(1).expand(B, H, S, self.rope_dim)], dim=-1)
        return attend(q, k, v, ctx, self._dropout_p(), self.scale)  # (B, H, T, hd)

    def _absorbed(self, q_nope, q_rope, c, k_rope, ctx) -> Tensor:
        """Decode path: attend over the latent directly (one shared kv head of width L + r)."""
        H, hd, L = self.n_heads, self.head_dim, self.latent_dim
        # a LoRA-adapted projection (transformer_toolkit.lora) gives its weight with the update added
        weight = getattr(self.kv_b_proj, "effective_weight", None)
        w = (weight() if weight is not None else self.kv_b_proj.weight).view(H, 2 * hd, L)
        w_uk, w_uv = w[:, :hd], w[:, hd:]  # (H, hd, L) each
        q_lat = torch.einsum("bhtd,hdl->bhtl", q_nope, w_uk.to(q_nope.dtype))  # (B, H, T, L)
        q = torch.cat([q_lat, q_rope], dim=-1)  # (B, H, T, L + r)
        k = torch.cat([c, k_rope], dim=-1).unsqueeze(1)  # (B, 1, S, L + r)
        o_lat = attend(q, k.to(q.dtype), c.unsqueeze(1).to(q.dtype), ctx, self._dropout_p(), self.scale)  # (B, H, T, L)
        return torch.einsum("bhtl,hdl->bhtd", o_lat, w_uv.to(o_lat.dtype))  # (B, H, T, hd)

"""Mixture-of-experts feed-forward layers with stacked expert weights.

- ``moe`` (``TokenChoiceMoE``): each token picks its top-k experts (Switch, Mixtral). Dropless:
  every token is processed by all k experts it picked, whatever the load, so a token's output
  depends only on that token and the layer stays causal.
- ``moe_shared`` (``SharedExpertMoE``): ``moe_n_shared`` always-on experts plus top-k over
  ``moe_n_routed`` routed experts (DeepSeekMoE, https://arxiv.org/abs/2401.06066).
- ``moe_ec`` (``ExpertChoiceMoE``): each expert picks its top-C tokens (Zhou et al. 2022).

Dispatch has no Python loop over experts or boolean masks and no host sync: the (token, expert)
pairs are sorted by expert, the token rows gathered, every expert run on its contiguous slice by
one grouped matmul (``kernels.grouped_mm``: ``torch._grouped_mm`` where it runs natively), scaled
by the routing weight and summed back with ``index_add_``.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .ffn import SwiGLU
from .kernels import Linear, compute_dtype, grouped_mm


class Experts(nn.Module):
    """``n`` SwiGLU experts as stacked weights, each ``(out, in)`` like ``nn.Linear``:
    gate/up ``(n, hidden, dim)``, down ``(n, dim, hidden)``."""

    def __init__(self, n: int, dim: int, hidden: int):
        super().__init__()
        self.gate_proj = nn.Parameter(torch.empty(n, hidden, dim))
        self.up_proj = nn.Parameter(torch.empty(n, hidden, dim))
        self.down_proj = nn.Parameter(torch.empty(n, dim, hidden))

    def grouped(self, x: Tensor, offs: Tensor) -> Tensor:
        """x: (N, dim) rows sorted by expert, ``offs`` the cumulative row count per expert."""
        h = F.silu(self.project("gate_proj", x, offs)) * self.project("up_proj", x, offs)
        return self.project("down_proj", h, offs)

    def batched(self, x: Tensor) -> Tensor:
        """x: (n, C, dim), C rows for every expert."""
        h = F.silu(self.project("gate_proj", x)) * self.project("up_proj", x)
        return self.project("down_proj", h)

    def project(self, name: str, x: Tensor, offs: Tensor | None = None) -> Tensor:
        """One stacked projection: rows of ``x`` sorted by expert (``offs`` given, grouped matmul)
        or ``(n, C, in)`` (one batched matmul). The one place a LoRA adapter hooks in
        (``transformer_toolkit.lora``)."""
        w = getattr(self, name).transpose(1, 2)  # (n, in, out)
        return torch.bmm(x, w) if offs is None else grouped_mm(x, w, offs)


def dispatch_topk(x: Tensor, probs: Tensor, k: int, normalize: bool, experts: Experts) -> tuple[Tensor, Tensor]:
    """Token-choice routing. x (N, D), probs (N, E) -> (output (N, D), assignments per expert (E,))."""
    N, E = probs.shape
    weights, idx = probs.topk(k, dim=-1)  # (N, k)
    if normalize:
        weights = weights / weights.sum(dim=-1, keepdim=True)
    flat = idx.reshape(-1)  # (N*k,) expert of each (token, slot) pair
    order = flat.argsort(stable=True)  # pairs grouped by expert
    token = order // k  # token row of each sorted pair
    counts = torch.zeros(E, dtype=torch.long, device=x.device).scatter_add_(0, flat, torch.ones_like(flat))
    y = experts.grouped(x[token], counts.cumsum(0).to(torch.int32))  # (N*k, D)
    y = y * weights.reshape(-1)[order, None].to(y.dtype)
    out = torch.zeros(N, x.shape[-1], dtype=y.dtype, device=x.device).index_add_(0, token, y)
    return out, counts


def load_balance_loss(probs: Tensor, counts: Tensor, k: int) -> Tensor:
    """Switch/Mixtral auxiliary loss ``E * sum_i f_i * P_i``: f_i is the fraction of all
    ``k * N`` assignments that went to expert i, P_i the mean router probability of expert i.
    Equals 1.0 when routing is perfectly uniform."""
    N, E = probs.shape
    f = counts.to(probs.dtype) / (N * k)
    return E * (f * probs.mean(dim=0)).sum()


class TokenChoiceMoE(nn.Module):
    """``moe``: top-k token-choice routing over ``n_experts`` SwiGLU experts, dropless."""

    def __init__(self, dim: int, hidden: int, n_experts: int, top_k: int, aux_weight: float,
                 normalize: bool = True):
        super().__init__()
        self.top_k, self.aux_weight, self.normalize = top_k, aux_weight, normalize
        self.router = Linear(dim, n_experts, bias=False)
        self.experts = Experts(n_experts, dim, hidden)

    @classmethod
    def from_config(cls, cfg) -> TokenChoiceMoE:
        return cls(cfg.dim, cfg.moe_hidden_dim, cfg.n_experts, cfg.top_k, cfg.moe_aux_weight, cfg.moe_norm_topk)

    def forward(self, x: Tensor, continuing: bool = False) -> tuple[Tensor, Tensor]:
        B, T, D = x.shape
        xf = x.reshape(B * T, D)
        probs = self.router(xf).float().softmax(dim=-1)  # (N, E)
        out, counts = dispatch_topk(xf, probs, self.top_k, self.normalize, self.experts)
        aux = self.aux_weight * load_balance_loss(probs, counts, self.top_k)
        return out.view(B, T, D).to(x.dtype), aux


class SharedExpertMoE(nn.Module):
    """``moe_shared``: ``n_shared`` always-on experts (held as one SwiGLU of ``n_shared * hidden``
    width, which computes exactly their sum) plus a top-k ``TokenChoiceMoE`` over ``n_routed``."""

    def __init__(self, dim: int, hidden: int, n_shared: int, n_routed: int, top_k: int,
                 aux_weight: float, normalize: bool = True):
        super().__init__()
        self.shared = SwiGLU(dim, n_shared * hidden) if n_shared else None
        self.routed = TokenChoiceMoE(dim, hidden, n_routed, top_k, aux_weight, normalize)

    @classmethod
    def from_config(cls, cfg) -> SharedExpertMoE:
        return cls(cfg.dim, cfg.moe_hidden_dim, cfg.moe_n_shared, cfg.moe_n_routed, cfg.top_k, cfg.moe_aux_weight,
                   cfg.moe_norm_topk)

    def forward(self, x: Tensor, continuing: bool = False) -> tuple[Tensor, Tensor]:
        y, aux = self.routed(x)
        if self.shared is not None:
            y = y + self.shared(x)[0]
        return y, aux


class ExpertChoiceMoE(nn.Module):
    """``moe_ec``: expert-choice routing (Zhou et al. 2022, https://arxiv.org/abs/2202.09368).

    Within each sequence, every expert takes the ``C = ceil(moe_capacity * T / n_experts)``
    tokens with the highest router scores for it, so load is balanced by construction (no
    auxiliary loss) and a token may get zero or several experts.

    **Not causal**: whether a token is picked depends on the scores of every other token in
    the sequence, including later ones. A model trained with it sees (a little) of the future.

    **During generation**: a forward over a fresh sequence (the prompt, with or without a cache)
    routes by expert choice over that sequence, exactly as in training. When a call extends a
    cached sequence (decode steps, ``continuing=True``) there is no sequence to choose from, so
    each new token goes to its ``top_k`` highest-scoring experts with renormalised weights
    (token choice). Cached generation therefore does not equal re-running the full forward at
    every step, which is itself not causal.
    """

    def __init__(self, dim: int, hidden: int, n_experts: int, capacity: float, top_k: int):
        super().__init__()
        self.capacity, self.top_k = capacity, top_k
        self.router = Linear(dim, n_experts, bias=False)
        self.experts = Experts(n_experts, dim, hidden)

    @classmethod
    def from_config(cls, cfg) -> ExpertChoiceMoE:
        return cls(cfg.dim, cfg.moe_hidden_dim, cfg.n_experts, cfg.moe_capacity, cfg.top_k)

    def forward(self, x: Tensor, continuing: bool = False) -> tuple[Tensor, Tensor]:
        B, T, D = x.shape
        E = self.router.out_features
        probs = self.router(x).float().softmax(dim=-1)  # (B, T, E)
        zero = torch.zeros((), device=x.device)
        if continuing:
            out, _ = dispatch_topk(x.reshape(B * T, D), probs.view(B * T, E), self.top_k, True, self.experts)
            return out.view(B, T, D).to(x.dtype), zero
        C = max(1, min(T, math.ceil(self.capacity * T / E)))
        gate, tok = probs.transpose(1, 2).topk(C, dim=-1)  # (B, E, C): each expert's chosen tokens
        rows = (tok + torch.arange(B, device=x.device).view(B, 1, 1) * T).transpose(0, 1)  # (E, B, C)
        xs = x.reshape(B * T, D)[rows.reshape(E, B * C)]  # (E, B*C, D)
        y = self.experts.batched(xs.to(compute_dtype(x)))  # (E, B*C, D)
        y = y * gate.transpose(0, 1).reshape(E, B * C, 1).to(y.dtype)
        out = torch.zeros(B * T, D, dtype=y.dtype, device=x.device).index_add_(0, rows.reshape(-1), y.reshape(-1, D))
        return out.view(B, T, D).to(x.dtype), zero

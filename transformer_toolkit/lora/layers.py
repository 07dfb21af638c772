"""LoRA adapters (Hu et al. 2021, https://arxiv.org/abs/2106.09685) on linears and stacked experts.

``y = W x + scale * B (A dropout(x))`` with ``A (r, in)`` drawn like ``nn.Linear``'s own init
(uniform in ``+-1/sqrt(in)``, PEFT's default) and ``B (out, r) = 0``, so an adapted model starts
exactly at its base. The base weight is the same ``Parameter`` as before (shared, frozen), so the
state dict keeps its keys and gains ``<path>.lora_A`` / ``<path>.lora_B``.

Stacked MoE experts get one adapter per expert: ``A (E, r, in)``, ``B (E, out, r)``, applied to
the rows each expert owns by the same grouped matmul as the expert itself (``Experts.project``).

Every adapter module has ``merged`` (the update is folded into ``W``: ``W += scale * B @ A``, the
adapter path is skipped) and ``active`` (False: the base model alone, e.g. as DPO's reference).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..model.kernels import Linear, grouped_mm
from ..model.moe import Experts


def _wide(t: Tensor) -> torch.dtype:
    """fp32 for half-precision adapters (merging sums in fp32), float64 stays float64."""
    return torch.promote_types(t.dtype, torch.float32)


def _dropout(p: float) -> nn.Module:
    return nn.Dropout(p) if p > 0 else nn.Identity()


class _Adapter:
    """What both adapter kinds share: merging into and out of their base weights."""

    merged: bool
    active: bool

    def adapted(self) -> bool:
        """Whether a forward adds the adapter path (not merged, not disabled)."""
        return self.active and not self.merged

    def _fold(self, sign: float) -> None:
        with torch.no_grad():
            for weight, delta in self.weight_deltas():
                weight.add_(delta.to(weight.dtype), alpha=sign)

    def merge(self) -> None:
        """``W += scale * B @ A`` (computed in fp32 at least); the forward then skips the adapter path."""
        if not self.merged:
            self._fold(1.0)
            self.merged = True

    def unmerge(self) -> None:
        """``W -= scale * B @ A``: the base weights back, up to fp32 rounding."""
        if self.merged:
            self._fold(-1.0)
            self.merged = False


class LoRALinear(Linear, _Adapter):
    """A linear layer (the same weight and bias) with a rank-``r`` update. It stays a
    ``kernels.Linear``: in a decode step (``kernels.decode_kernels``) the base product runs the
    kernel chosen for it, stacked with its siblings', and the update is added on top."""

    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.kernel = None
        self.weight = base.weight
        self.register_parameter("bias", base.bias)
        like = dict(dtype=base.weight.dtype, device=base.weight.device)
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, **like))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, r, **like))
        bound = 1.0 / math.sqrt(self.in_features)
        nn.init.uniform_(self.lora_A, -bound, bound)
        self.scale, self.r = alpha / r, r
        self.lora_dropout = _dropout(dropout)
        self.merged, self.active = False, True

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)  # the base product (a decode kernel's when one is set)
        if not self.adapted():
            return y
        h = F.linear(self.lora_dropout(x), self.lora_A)  # (..., r)
        # y + scale * h @ B^T as one addmm: no separate scale and add over the (tokens, out) output,
        # which on a busy CPU cost as much as the small matmuls themselves
        out = torch.addmm(y.reshape(-1, self.out_features), h.reshape(-1, h.shape[-1]), self.lora_B.t(),
                          alpha=self.scale)
        return out.view(y.shape)

    def delta_weight(self) -> Tensor:
        """``scale * B @ A`` in fp32 (or the weight's wider dtype), ``(out, in)``."""
        dt = _wide(self.lora_A)
        return (self.lora_B.to(dt) @ self.lora_A.to(dt)) * self.scale

    def weight_deltas(self) -> list[tuple[Tensor, Tensor]]:
        return [(self.weight, self.delta_weight())]

    def effective_weight(self) -> Tensor:
        """The weight this module computes with: ``W`` plus the update when it is applied (for
        code that reads a projection's weight instead of calling it, e.g. MLA's decode step)."""
        if not self.adapted():
            return self.weight
        return self.weight + self.delta_weight().to(self.weight.dtype)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, r={self.r}, scale={self.scale:g}"

    def base_module(self) -> Linear:
        """A plain ``Linear`` holding this module's weight and bias (the same tensors)."""
        out = Linear(self.in_features, self.out_features, bias=self.bias is not None, device="meta")
        out.weight = self.weight
        out.register_parameter("bias", self.bias)
        return out


class ExpertLoRA(nn.Module):
    """One stacked projection's adapters: ``A (E, r, in)``, ``B (E, out, r)``."""

    def __init__(self, n: int, d_in: int, d_out: int, r: int, alpha: float, dropout: float, like: Tensor):
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(n, r, d_in, dtype=like.dtype, device=like.device))
        self.lora_B = nn.Parameter(torch.zeros(n, d_out, r, dtype=like.dtype, device=like.device))
        bound = 1.0 / math.sqrt(d_in)
        nn.init.uniform_(self.lora_A, -bound, bound)
        self.scale = alpha / r
        self.lora_dropout = _dropout(dropout)

    def forward(self, x: Tensor, offs: Tensor | None) -> Tensor:
        """x: rows sorted by expert with ``offs`` (grouped matmul), or ``(E, C, in)`` (batched)."""
        a, b = self.lora_A.transpose(1, 2), self.lora_B.transpose(1, 2)  # (E, in, r), (E, r, out)
        h = self.lora_dropout(x)
        if offs is None:
            return torch.bmm(torch.bmm(h, a.to(h.dtype)), b.to(h.dtype)) * self.scale
        return grouped_mm(grouped_mm(h, a, offs), b, offs) * self.scale

    def delta_weight(self) -> Tensor:
        """``scale * B @ A`` per expert in fp32 (or a wider dtype), ``(E, out, in)``."""
        dt = _wide(self.lora_A)
        return torch.bmm(self.lora_B.to(dt), self.lora_A.to(dt)) * self.scale


class LoRAExperts(Experts, _Adapter):
    """Stacked experts (the same three weights) with per-expert adapters on ``names``."""

    def __init__(self, base: Experts, names: list[str], r: int, alpha: float, dropout: float = 0.0):
        nn.Module.__init__(self)
        self.gate_proj, self.up_proj, self.down_proj = base.gate_proj, base.up_proj, base.down_proj
        self.lora = nn.ModuleDict()
        for name in names:
            w = getattr(self, name)  # (E, out, in)
            self.lora[name] = ExpertLoRA(w.shape[0], w.shape[2], w.shape[1], r, alpha, dropout, w)
        self.r = r
        self.merged, self.active = False, True

    def project(self, name: str, x: Tensor, offs: Tensor | None = None) -> Tensor:
        y = super().project(name, x, offs)
        if name not in self.lora or not self.adapted():
            return y
        return y + self.lora[name](x, offs).to(y.dtype)

    def weight_deltas(self) -> list[tuple[Tensor, Tensor]]:
        return [(getattr(self, name), adapter.delta_weight()) for name, adapter in self.lora.items()]

    def base_module(self) -> Experts:
        """A plain ``Experts`` holding this module's weights (the same tensors)."""
        out = Experts.__new__(Experts)
        nn.Module.__init__(out)
        out.gate_proj, out.up_proj, out.down_proj = self.gate_proj, self.up_proj, self.down_proj
        return out


ADAPTERS = (LoRALinear, LoRAExperts)

"""Normalization layers: ``rmsnorm`` (Llama, Mistral, Qwen) and ``layernorm`` (GPT-2, BERT)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor


class RMSNorm(nn.Module):
    """x / rms(x) * weight (Zhang & Sennrich 2019), no mean subtraction and no bias.
    Statistics are computed in float32 and the result is cast back, as in HF Llama."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype == torch.float32 and self.weight.dtype == torch.float32:
            return F.rms_norm(x, (x.shape[-1],), self.weight, self.eps)  # one fused call
        y = F.rms_norm(x.float(), (x.shape[-1],), eps=self.eps).to(x.dtype)
        return y * self.weight.to(x.dtype)


class LayerNorm(nn.LayerNorm):
    """Classic layer norm with a learned scale and bias."""

    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__(dim, eps=eps)

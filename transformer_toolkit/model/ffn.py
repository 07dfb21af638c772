"""Dense feed-forward blocks. Plain: ``down(act(up(x)))``; gated (Shazeer 2020,
https://arxiv.org/abs/2002.05202): ``down(act(gate(x)) * up(x))``.

Every feed-forward variant, dense or mixture-of-experts, has one interface:
``forward(x, continuing=False) -> (y, aux)``, with ``aux`` the load-balancing loss of an MoE
layer and None for a dense one (``continuing``: the call extends a cached sequence; only
expert choice routes differently then). ``from_config(cfg)`` builds a layer from a
``TransformerConfig``.

GELU is the tanh approximation by default (GPT-2's ``gelu_new``, Gemma's GeGLU); config
``gelu="exact"`` uses the erf form (BERT, nanoGPT's ``nn.GELU()``), which this torch's CPU build
also computes about 3x faster.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from .kernels import Linear


def gelu_tanh(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


# the ``gelu`` config field: which form a GELU activation computes
GELU = {"tanh": gelu_tanh, "exact": F.gelu}


def _configured_act(cls, cfg):
    """The GELU form ``cfg.gelu`` names for a class whose activation is GELU; None (the class's own) otherwise."""
    return GELU[cfg.gelu] if cls.act is gelu_tanh else None


class FFN(nn.Module):
    """``ffn``: two linear layers with GELU between them (GPT-2, BERT)."""

    act = staticmethod(gelu_tanh)

    def __init__(self, dim: int, hidden: int, bias: bool = False, act=None):
        super().__init__()
        if act is not None:
            self.act = act
        self.up_proj = Linear(dim, hidden, bias=bias)
        self.down_proj = Linear(hidden, dim, bias=bias)

    @classmethod
    def from_config(cls, cfg) -> FFN:
        return cls(cfg.dim, cfg.hidden_dim, bias=cfg.bias, act=_configured_act(cls, cfg))

    def forward(self, x: Tensor, continuing: bool = False) -> tuple[Tensor, None]:
        return self.down_proj(self.act(self.up_proj(x))), None


class ReluFFN(FFN):
    """``relu_ffn``: the original Transformer's ReLU MLP."""

    act = staticmethod(F.relu)


class GatedFFN(nn.Module):
    """Gated linear unit MLP; subclasses pick the gate activation."""

    act = staticmethod(torch.sigmoid)

    def __init__(self, dim: int, hidden: int, bias: bool = False, act=None):
        super().__init__()
        if act is not None:
            self.act = act
        self.gate_proj = Linear(dim, hidden, bias=bias)
        self.up_proj = Linear(dim, hidden, bias=bias)
        self.down_proj = Linear(hidden, dim, bias=bias)

    @classmethod
    def from_config(cls, cfg) -> GatedFFN:
        return cls(cfg.dim, cfg.hidden_dim, bias=cfg.bias, act=_configured_act(cls, cfg))

    def forward(self, x: Tensor, continuing: bool = False) -> tuple[Tensor, None]:
        return self.down_proj(self.act(self.gate_proj(x)) * self.up_proj(x)), None


class GLU(GatedFFN):
    """``glu``: sigmoid gate (Dauphin et al. 2017)."""


class ReGLU(GatedFFN):
    """``reglu``: ReLU gate."""

    act = staticmethod(F.relu)


class GeGLU(GatedFFN):
    """``geglu``: GELU gate (T5 v1.1, Gemma)."""

    act = staticmethod(gelu_tanh)


class SwiGLU(GatedFFN):
    """``swiglu``: SiLU gate (PaLM, Llama, Mistral, Qwen)."""

    act = staticmethod(F.silu)

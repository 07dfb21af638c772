"""Tiny models and prompts shared by the inference and serving tests."""

from __future__ import annotations

import torch
from model_helpers import tiny_config

from transformer_toolkit.model import Transformer


def model(**kw) -> Transformer:
    """Spread-out logits (an untied head scaled up) so greedy argmax is far from ties."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(**(dict(tie_weights=False, init_std=0.05) | kw))).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model


def prompts(lengths, seed=1, vocab=97):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (n,), generator=g) for n in lengths]

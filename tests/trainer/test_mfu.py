"""MFU's FLOP count (matmul weights a token passes through) and the GPU peaks it divides by."""

from __future__ import annotations

import pytest
import torch
from model_helpers import tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.model.moe import Experts
from transformer_toolkit.trainer.mfu import flops_per_token, peak_flops


def _params(model, skip=()):
    return sum(p.numel() for name, p in model.named_parameters() if not name.startswith(skip))


def test_dense_counts_every_matmul_weight_but_the_lookups():
    model = Transformer(tiny_config(pos_enc="learned", tie_weights=False))
    attn = 12 * model.cfg.n_layers * model.cfg.dim * 32
    assert flops_per_token(model, 32) == 6 * _params(model, skip=("embed.", "pos.")) + attn
    tied = Transformer(tiny_config(tie_weights=True))  # the table is also the head's matmul
    assert flops_per_token(tied, 32) == 6 * _params(tied) + 12 * tied.cfg.n_layers * tied.cfg.dim * 32


@pytest.mark.parametrize(("ffn", "per_token"), [("moe", 2), ("moe_shared", 2), ("moe_ec", 1.5)])
def test_moe_counts_the_experts_a_token_passes_through(ffn, per_token):
    model = Transformer(tiny_config(ffn=ffn, n_experts=8, top_k=2, moe_capacity=1.5, tie_weights=False))
    experts = [m for m in model.modules() if isinstance(m, Experts)]
    n_experts = experts[0].gate_proj.shape[0]
    expert_params = sum(p.numel() for m in experts for p in m.parameters())
    active = _params(model, skip=("embed.",)) - expert_params + expert_params * per_token / n_experts
    attn = 12 * model.cfg.n_layers * model.cfg.dim * 16
    assert flops_per_token(model, 16) == pytest.approx(6 * active + attn, rel=1e-9)


@pytest.mark.parametrize(("name", "peak"), [("NVIDIA H100 80GB HBM3", 989e12), ("NVIDIA H100 PCIe", 756e12),
                                            ("NVIDIA H100 NVL", 835e12), ("NVIDIA A10G", 70e12),
                                            ("NVIDIA A10", 125e12), ("Some Future GPU", None)])
def test_peak_by_device_name(monkeypatch, name, peak):
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: name)
    assert peak_flops(torch.device("cuda")) == peak
    assert peak_flops(torch.device("cpu")) is None

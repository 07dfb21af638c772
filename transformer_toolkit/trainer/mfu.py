"""Model FLOP utilisation on CUDA: achieved training FLOP/s over the GPU's dense bf16 peak.

Training FLOPs per token = 6 * N + 12 * n_layers * dim * seq_len (PaLM appendix B): 6N for the
forward and backward matmuls of the N non-embedding weights (the head included), plus the
attention scores and weighted sums, which grow with the context length. In a mixture of
experts N counts the weights a token passes through: of ``n`` experts, ``top_k`` (token
choice) or ``capacity`` on average (expert choice).
"""

from __future__ import annotations

import torch
import torch.nn as nn

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, in FLOP/s.
BF16_PEAK = {
    "H200": 989e12, "H100": 989e12, "H100 PCIe": 756e12, "H100 NVL": 835e12, "H800": 989e12, "GH200": 989e12,
    "B200": 2250e12,
    "A100": 312e12, "A800": 312e12, "A10G": 70e12, "A10": 125e12, "L40S": 362e12, "L4": 121e12,
    "RTX 4090": 165e12, "RTX 3090": 71e12, "V100": 125e12, "T4": 65e12,
}


def idle_expert_params(model: nn.Module) -> int:
    """Expert weights a token does not pass through (0 for a dense model): the total less this
    is the model's active parameter count."""
    from ..model.moe import ExpertChoiceMoE, TokenChoiceMoE

    n = 0
    for m in model.modules():
        if isinstance(m, (TokenChoiceMoE, ExpertChoiceMoE)):
            per_token = m.top_k if isinstance(m, TokenChoiceMoE) else m.capacity
            total = m.experts.gate_proj.shape[0]
            n += round(sum(p.numel() for p in m.experts.parameters()) * (1 - min(per_token, total) / total))
    return n


def flops_per_token(model: nn.Module, seq_len: int) -> float:
    n = sum(p.numel() for p in model.parameters())
    embed = getattr(model, "embed", None)
    if isinstance(embed, nn.Embedding) and embed.weight is not getattr(getattr(model, "head", None), "weight", None):
        n -= embed.weight.numel()  # a lookup, not a matmul (a tied table is the head's matmul: keep it)
    pos = getattr(getattr(model, "pos", None), "weight", None)
    if isinstance(pos, nn.Parameter):
        n -= pos.numel()  # learned positions: a lookup too
    n -= idle_expert_params(model)  # experts a token does not pass through do no work for it
    cfg = getattr(model, "cfg", None)
    attn = 12 * cfg.n_layers * cfg.dim * seq_len if cfg is not None else 0
    return 6 * n + attn


def peak_flops(device: torch.device) -> float | None:
    """The bf16 peak of a known CUDA GPU, or None (no MFU is shown then)."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(BF16_PEAK, key=len, reverse=True):  # "A10G" before "A10"
        if key in name:
            return BF16_PEAK[key]
    return None

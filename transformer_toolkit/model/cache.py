"""Pre-allocated inference caches, written in place at absolute positions.

Each attention layer declares the tensors it caches and their shapes with the sequence axis
second to last: ``k``/``v`` of shape ``(B, n_kv_heads, max_len, head_dim)`` for MHA/GQA/MQA,
the latent ``(B, max_len, latent_dim)`` and the rope key ``(B, max_len, rope_head_dim)`` for MLA.
Nothing grows by concatenation; a step writes ``T`` rows and reads the prefix ``[0, start+T)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


class LayerCache:
    """The cache of one attention layer: one buffer per cached tensor."""

    def __init__(self, shapes: dict[str, tuple[int, ...]], dtype: torch.dtype, device: torch.device):
        self.names = tuple(shapes)
        self.buffers = [torch.zeros(s, dtype=dtype, device=device) for s in shapes.values()]
        self.max_len = next(iter(shapes.values()))[-2]

    def update(self, start: int, *new: Tensor) -> list[Tensor]:
        """Write ``new`` (each ``(..., T, d)``) at positions ``start..start+T-1`` and return
        views of every buffer over positions ``0..start+T-1``."""
        end = start + new[0].shape[-2]
        if end > self.max_len:
            raise ValueError(f"KV cache overflow: positions up to {end} but the cache holds {self.max_len}")
        out = []
        for buf, x in zip(self.buffers, new, strict=True):
            buf[..., start:end, :] = x
            out.append(buf[..., :end, :])
        return out

    def bytes_per_token(self) -> int:
        """Bytes this layer stores per cached token, over the whole batch."""
        return sum(b.numel() // b.shape[-2] * b.element_size() for b in self.buffers)

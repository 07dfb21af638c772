"""Pre-allocated inference caches, written in place at absolute positions.

Each attention layer declares the tensors it caches and their shapes with the sequence axis
second to last: ``k``/``v`` of shape ``(B, n_kv_heads, max_len, head_dim)`` for MHA/GQA/MQA,
the latent ``(B, max_len, latent_dim)`` and the rope key ``(B, max_len, rope_head_dim)`` for MLA.
Nothing grows by concatenation; a step writes ``T`` rows and reads the prefix ``[0, start+T)``.

``start`` may also be a tensor (one long, on the cache's device). The rows are then written with
``index_copy_`` and the whole buffer is returned, so the step has the same shapes at every
position and no host synchronisation: the form a CUDA graph can capture. The caller masks the
positions not yet written (``Transformer._context`` does).
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

    def update(self, start: int | Tensor, *new: Tensor) -> list[Tensor]:
        """Write ``new`` (each ``(..., T, d)``) at positions ``start..start+T-1`` and return
        views of every buffer over positions ``0..start+T-1`` (the whole buffers when ``start``
        is a tensor; no bounds check then, as that would need a host read)."""
        if isinstance(start, Tensor):
            idx = start.reshape(1) + torch.arange(new[0].shape[-2], device=start.device)
            for buf, x in zip(self.buffers, new, strict=True):
                buf.index_copy_(buf.dim() - 2, idx, x.to(buf.dtype))
            return list(self.buffers)
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

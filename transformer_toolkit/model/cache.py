"""Pre-allocated inference caches, written in place at absolute positions.

Each attention layer declares the tensors it caches and their shapes with the sequence axis
second to last: ``k``/``v`` of shape ``(B, n_kv_heads, max_len, head_dim)`` for MHA/GQA/MQA,
the latent ``(B, max_len, latent_dim)`` and the rope key ``(B, max_len, rope_head_dim)`` for MLA.
Nothing grows by concatenation; a step writes ``T`` rows and reads the prefix ``[0, start+T)``.

``start`` may also be a tensor on the cache's device: one long (every row at that position) or
one per row (rows at different positions, as the requests of a continuous batch are). The rows
are then written with ``index_copy_`` / ``scatter_`` and the whole buffer is returned, so the
step has the same shapes at every position and no host synchronisation: the form a CUDA graph
can capture. The caller masks the positions not yet written (``Transformer._static_context``).

``view(rows, length)`` is a cache over some rows and the first positions of this one, sharing
its memory: an inference engine runs a step over its active rows, up to the longest of them.
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

    def view(self, rows: slice, length: int | None = None) -> LayerCache:
        """This cache's ``rows`` (a slice of the batch) over positions ``0..length-1``, sharing
        memory: what a step writes through the view lands here."""
        view = object.__new__(LayerCache)
        view.names = self.names
        view.buffers = [b[rows, ..., :length, :] for b in self.buffers]
        view.max_len = view.buffers[0].shape[-2]
        return view

    def update(self, start: int | Tensor, *new: Tensor) -> list[Tensor]:
        """Write ``new`` (each ``(B, ..., T, d)``) at positions ``start..start+T-1`` and return
        views of every buffer over positions ``0..start+T-1`` (the whole buffers when ``start``
        is a tensor, of one position or ``(B,)`` per-row ones; no bounds check then, as that
        would need a host read)."""
        if isinstance(start, Tensor):
            T = new[0].shape[-2]
            if start.numel() == 1:
                idx = start.reshape(1) + torch.arange(T, device=start.device)
                for buf, x in zip(self.buffers, new, strict=True):
                    buf.index_copy_(buf.dim() - 2, idx, x.to(buf.dtype))
                return list(self.buffers)
            rows = start.reshape(-1, 1) + torch.arange(T, device=start.device)  # (B, T) per-row positions
            for buf, x in zip(self.buffers, new, strict=True):
                # (B, 1.., T, 1) broadcast to x's shape: row b's T vectors go to its own positions
                idx = rows.view(rows.shape[0], *[1] * (x.dim() - 3), T, 1).expand_as(x)
                buf.scatter_(buf.dim() - 2, idx, x.to(buf.dtype))
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

"""Positional encodings. Each applies exactly once, in exactly one place:

- ``rope``: inside attention, rotating q and k by their absolute position (``RotaryEmbedding``);
- ``alibi``: inside attention, a bias ``-slope_h * (i - j)`` that grows with distance (``alibi_bias``);
- ``sinusoidal`` / ``learned``: added to the residual stream after the embedding;
- ``none``: nothing.

During cached decoding every encoding uses the absolute position of the new token, so the
cached forward equals the full forward.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
from torch import Tensor

# Rows of a RoPE or sinusoidal table built with the model. Longer tables are built when a
# forward or a cache first reaches further (``ensure``), so a model whose config allows a long
# context (a GGUF file saying 131,072, or 2^31) costs memory only for the positions it uses.
# Each row is a function of its position alone, so a table grown later holds the same values.
INITIAL_ROWS = 4096


def _grown(rows: int, needed: int, limit: int) -> int:
    """Rows to build when ``needed`` positions are asked of a table of ``rows``: at least
    double, so a sequence growing one token at a time rebuilds it only log(n) times."""
    return min(limit, max(needed, 2 * rows))


class RotaryEmbedding(nn.Module):
    """RoPE tables (Su et al. 2021, https://arxiv.org/abs/2104.09864) in the ``rotate_half``
    layout used by HF Llama: the first half of each head's dims pairs with the second half.
    cos/sin are float32 buffers of shape ``(rows, rot_dim)`` regardless of the model dtype, for
    positions ``0..rows-1`` (``rows`` grows to at most ``max_seq`` as positions are used, see
    ``INITIAL_ROWS``); ``sin`` carries the rotation's sign (``-sin`` on the first half, see
    ``apply_rope``).
    """

    def __init__(self, rot_dim: int, max_seq: int, theta: float = 10000.0):
        super().__init__()
        self.rot_dim, self.max_seq, self.theta = rot_dim, max_seq, theta
        cos, sin = self._tables(min(max_seq, INITIAL_ROWS))
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def _tables(self, rows: int, device: torch.device | None = None) -> tuple[Tensor, Tensor]:
        inv_freq = 1.0 / (self.theta ** (torch.arange(0, self.rot_dim, 2, device=device,
                                                       dtype=torch.float64) / self.rot_dim))
        t = torch.arange(rows, device=device, dtype=torch.float64)
        freqs = torch.outer(t, inv_freq)  # (rows, rot_dim/2)
        cos = torch.cat([freqs.cos(), freqs.cos()], dim=-1)  # (rows, rot_dim)
        sin = torch.cat([-freqs.sin(), freqs.sin()], dim=-1)  # signed: see apply_rope
        return cos.float(), sin.float()

    def reset_tables(self, rows: int | None = None) -> None:
        """Recompute the tables in float32 (after ``model.to(dtype)`` or loading on meta), for
        ``rows`` positions (default: as many as now)."""
        with torch.inference_mode(False):  # plain tensors: training may follow a generate
            cos, sin = self._tables(rows or self.cos.shape[0], self.cos.device)
        self.cos, self.sin = cos, sin

    def ensure(self, n: int) -> None:
        """Tables for positions ``0..n-1`` at least (``n <= max_seq``)."""
        if n > self.cos.shape[0]:
            self.reset_tables(_grown(self.cos.shape[0], n, self.max_seq))

    def _apply(self, fn, recurse=True):
        # keep the tables float32 when the model is cast to half precision
        super()._apply(fn, recurse)
        if self.cos.dtype != torch.float32:
            self.reset_tables()
        return self

    def forward(self, start: int, length: int, positions: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """cos, sin for absolute positions ``start .. start+length-1`` (shape ``(T, rot_dim)``),
        or for an explicit ``positions`` tensor ``(B, T)`` (shape ``(B, 1, T, rot_dim)``; the
        caller has ``ensure``d the tables cover them)."""
        if positions is not None:
            return self.cos[positions].unsqueeze(1), self.sin[positions].unsqueeze(1)
        return self.cos[start:start + length], self.sin[start:start + length]


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate ``x`` (B, H, T, d) by position; math in float32, result in x's dtype.

    In the rotate-half layout, with halves ``x1, x2`` and angle ``t``:
    ``(x1 cos t - x2 sin t, x2 cos t + x1 sin t)``. ``sin`` holds ``(-sin t, +sin t)``, so the
    second term is ``roll(x, d/2) * sin``: three kernels instead of five.
    """
    xf = x.float()
    return torch.addcmul(xf * cos, xf.roll(x.shape[-1] // 2, dims=-1), sin).to(x.dtype)


def alibi_slopes(n_heads: int) -> Tensor:
    """Per-head slopes of ALiBi (Press et al. 2022, https://arxiv.org/abs/2108.12409):
    a geometric sequence starting at 2^(-8/n); for non-powers of two, the closest power of two's
    slopes plus every other slope of the next power of two, as in the paper's reference code."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(n_heads).is_integer():
        slopes = pow2(n_heads)
    else:
        closest = 2 ** math.floor(math.log2(n_heads))
        slopes = pow2(closest) + pow2(2 * closest)[0::2][: n_heads - closest]
    return torch.tensor(slopes, dtype=torch.float32)


def alibi_bias(slopes: Tensor, q_pos: Tensor, k_pos: Tensor) -> Tensor:
    """Additive attention bias ``-slope_h * (q_pos - k_pos)``: zero on the diagonal and more
    negative the further back a key is. Shape ``(H, Tq, Tk)``, or ``(B, H, Tq, Tk)`` for
    per-row query positions ``q_pos (B, Tq)``; causality is masked separately."""
    dist = (q_pos[..., :, None] - k_pos).float().unsqueeze(-3)  # (.., 1, Tq, Tk), >= 0 for visible keys
    return -slopes[:, None, None] * dist


class SinusoidalPE(nn.Module):
    """Fixed sin/cos table added to the residual stream (Vaswani et al. 2017); no parameters.

    The raw table has values of order 1 (RMS 1/sqrt(2)); token embeddings here start at
    N(0, init_std). Unscaled, positions would drown the tokens (the paper instead multiplies
    embeddings of std dim^-1/2 by sqrt(dim)), so the table is scaled to RMS ``rms``, the same
    size as the embeddings and as a freshly initialised learned table.
    """

    def __init__(self, dim: int, max_seq: int, rms: float = 1 / math.sqrt(2)):
        super().__init__()
        self.dim, self.max_seq, self.rms = dim, max_seq, rms
        self.register_buffer("pe", self._table(min(max_seq, INITIAL_ROWS)), persistent=False)

    def _table(self, rows: int, device: torch.device | None = None) -> Tensor:
        pos = torch.arange(rows, dtype=torch.float64, device=device)[:, None]
        div = torch.exp(torch.arange(0, self.dim, 2, dtype=torch.float64, device=device)
                        * (-math.log(10000.0) / self.dim))
        pe = torch.zeros(rows, self.dim, dtype=torch.float64, device=device)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)[:, : self.dim // 2]
        return (pe * self.rms * math.sqrt(2)).float()

    def ensure(self, n: int) -> None:
        """The table for positions ``0..n-1`` at least (``n <= max_seq``; see ``INITIAL_ROWS``)."""
        if n > self.pe.shape[0]:
            with torch.inference_mode(False):
                self.pe = self._table(_grown(self.pe.shape[0], n, self.max_seq), self.pe.device).to(self.pe.dtype)

    def forward(self, start: int, length: int, positions: Tensor | None = None) -> Tensor:
        return self.pe[positions] if positions is not None else self.pe[start:start + length]


class LearnedPE(nn.Module):
    """A trainable position table (GPT-2, BERT); positions beyond ``max_seq`` do not exist."""

    def __init__(self, dim: int, max_seq: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(max_seq, dim))

    def forward(self, start: int, length: int, positions: Tensor | None = None) -> Tensor:
        return self.weight[positions] if positions is not None else self.weight[start:start + length]


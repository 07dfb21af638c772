"""Sampling: how one next token is picked from a row of logits.

``SamplingParams`` is the one value that says how (temperature, top-k, top-p); ``sample_next``
applies it to a batch of rows that share it, ``sample_rows`` to a batch whose rows are
independent requests with their own settings and random generators (a continuous batch).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from numbers import Integral, Real

import torch
from torch import Tensor


@dataclass(frozen=True)
class SamplingParams:
    """``temperature == 0`` or ``top_k == 1`` is greedy. Otherwise logits are divided by the
    temperature, restricted to the ``top_k`` largest, then to the smallest set whose probability
    reaches ``top_p`` (nucleus sampling), and sampled. Checked when made."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self):
        # written so that NaN fails too (every comparison with NaN is False)
        if not (isinstance(self.temperature, Real) and 0 <= self.temperature < math.inf):
            raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k is not None and not (isinstance(self.top_k, Integral) and self.top_k >= 1):
            raise ValueError(f"top_k must be an integer >= 1, or None for no limit; got {self.top_k}")
        if self.top_p is not None and not (isinstance(self.top_p, Real) and 0.0 < self.top_p <= 1.0):
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row from ``logits`` ``(B, V)`` (see ``SamplingParams``; the most
    likely token always survives top-p)."""
    if temperature == 0 or top_k == 1:
        # exact either way; PyTorch's CPU argmax is ~3x slower over bf16 than over fp32
        return (logits.float() if logits.device.type == "cpu" else logits).argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass strictly above each token
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def sample(logits: Tensor, params: SamplingParams, generator: torch.Generator | None = None) -> Tensor:
    """``sample_next`` with the settings of ``params``."""
    return sample_next(logits, params.temperature, params.top_k, params.top_p, generator)


def sample_rows(logits: Tensor, params: list[SamplingParams],
                generators: list[torch.Generator | None]) -> Tensor:
    """One token per row of ``logits`` ``(n, V)``, row ``i`` with ``params[i]`` and
    ``generators[i]``. Rows that share settings and generator are sampled together (every
    greedy row in one argmax), so a row's draw does not depend on which others are in the batch
    unless they share its generator."""
    out = torch.empty(logits.shape[0], dtype=torch.long, device=logits.device)
    groups: dict[tuple, list[int]] = {}
    for i, (p, g) in enumerate(zip(params, generators, strict=True)):
        groups.setdefault(("greedy",) if p.greedy else (p, id(g)), []).append(i)
    for key, rows in groups.items():
        idx = torch.tensor(rows, device=logits.device)
        first = rows[0]
        gen = None if key == ("greedy",) else generators[first]
        out[idx] = sample(logits[idx], params[first], gen)
    return out


def logprobs(logits: Tensor, chosen: Tensor, top: int) -> tuple[Tensor, Tensor, Tensor]:
    """The model's log-probabilities (before temperature and truncation): of ``chosen`` ``(n,)``,
    and the ``top`` most likely tokens per row: ``(chosen (n,), top values (n, top), top ids)``."""
    lp = torch.log_softmax(logits.float(), dim=-1)
    values, ids = lp.topk(top, dim=-1) if top else (lp[:, :0], chosen[:, None][:, :0])
    return lp.gather(-1, chosen[:, None])[:, 0], values, ids

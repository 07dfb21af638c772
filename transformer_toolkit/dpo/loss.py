"""Sequence log-probabilities and the preference losses (what TRL's ``DPOTrainer`` computes).

For a pair with policy log-probs ``c``, ``r`` (summed over the response tokens) and reference
log-probs ``c0``, ``r0``: ``delta = (c - c0) - (r - r0)``, and per pair

- ``sigmoid``: ``-log sigmoid(beta * delta)`` (DPO)
- ``hinge``:   ``relu(1 - beta * delta)`` (SLiC)
- ``ipo``:     ``((c - c0) / |c| - (r - r0) / |r| - 1 / (2 beta))^2``, ``|.|`` the response lengths
- ``simpo``:   ``-log sigmoid(beta * (c / |c| - r / |r|) - gamma)``, no reference

The implicit rewards are ``beta * (c - c0)`` and ``beta * (r - r0)`` (SimPO: ``beta * c / |c|``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from ..trainer.loss import target_logprobs
from .config import DPOConfig


def sequence_logps(logits: Tensor, targets: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """``(sum of log p(target) over the masked tokens, masked token count)`` per row:
    logits ``(B, T, V)`` (any float dtype; no fp32 copy is made), targets and mask ``(B, T)``."""
    keep = mask > 0
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # padding may hold any id
    lp = target_logprobs(logits, safe)
    return (lp * keep).sum(-1), keep.sum(-1).to(lp.dtype)


def preference_loss(logps: Tensor, ref_logps: Tensor | None, lengths: Tensor, cfg: DPOConfig
                    ) -> tuple[Tensor, Tensor, Tensor]:
    """``(loss per pair (N,), chosen rewards (N,), rejected rewards (N,))`` from the ``(2N,)``
    log-probs of the rows ``[chosen..., rejected...]`` (and their reference log-probs)."""
    c, r = logps.chunk(2)
    n_c, n_r = lengths.clamp(min=1).chunk(2)
    beta = cfg.beta
    if cfg.loss == "simpo":
        avg_c, avg_r = c / n_c, r / n_r
        loss = -F.logsigmoid(beta * (avg_c - avg_r) - cfg.simpo_gamma)
        return loss, beta * avg_c.detach(), beta * avg_r.detach()
    c0, r0 = ref_logps.to(logps.dtype).chunk(2)
    dc, dr = c - c0, r - r0
    if cfg.loss == "sigmoid":
        loss = -F.logsigmoid(beta * (dc - dr))
    elif cfg.loss == "hinge":
        loss = torch.relu(1 - beta * (dc - dr))
    elif cfg.loss == "ipo":
        loss = (dc / n_c - dr / n_r - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown DPO loss {cfg.loss!r}")
    return loss, beta * dc.detach(), beta * dr.detach()

"""The GRPO objective (Shao et al. 2024, https://arxiv.org/abs/2402.03300), per token.

For completion ``i`` of a group with rewards ``r``: advantage ``A_i = (r_i - mean(r)) / (std(r) + eps)``
(``scale="group"``; ``"none"`` keeps ``r_i - mean(r)``, Dr. GRPO), the same for every token of
the completion. Per completion token ``t``, with ``ratio = pi(o_t) / pi_old(o_t)``::

    loss_t = -min(ratio * A, clip(ratio, 1 - eps_low, 1 + eps_high) * A) + beta * KL_t
    KL_t   = exp(ref_t - logp_t) - (ref_t - logp_t) - 1        (k3, an unbiased non-negative estimator)

``pi_old`` is the policy that sampled the completions; with one optimizer step per rollout it
is the current one, so ``ratio`` is 1 in value and the gradient is REINFORCE with a group
baseline. The Trainer then divides the summed token losses by the unit that ``loss_type``
names (see ``GRPOConfig``).
"""

from __future__ import annotations

import torch
from torch import Tensor

ADV_EPS = 1e-4  # as TRL: a group whose rewards are all equal gets advantage 0, not 0/0


def group_advantages(rewards: Tensor, group: int, scale: str = "group") -> tuple[Tensor, Tensor]:
    """``(advantages (N,), each row's group std (N,))`` for ``rewards`` ``(N,)``, groups of
    ``group`` consecutive rows. The std is the unbiased one (Bessel), as TRL's."""
    r = rewards.float().view(-1, group)
    mean = r.mean(dim=1, keepdim=True)
    std = r.std(dim=1, keepdim=True) if group > 1 else torch.zeros_like(mean)
    adv = r - mean
    if scale == "group":
        adv = adv / (std + ADV_EPS)
    return adv.reshape(-1), std.expand_as(r).reshape(-1)


def token_logps(logits: Tensor, targets: Tensor) -> Tensor:
    """``(B, T)`` log-probability of each target token; the log-softmax in fp32."""
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, targets.unsqueeze(-1)).squeeze(-1)


def grpo_token_loss(logps: Tensor, advantages: Tensor, old_logps: Tensor | None = None,
                    ref_logps: Tensor | None = None, beta: float = 0.0, eps_low: float = 0.2,
                    eps_high: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Per-token losses ``(B, T)`` (unmasked) and per-token diagnostics: ``kl`` (zeros without a
    reference), ``clipped`` (1 where the clipped term is the one taken and carries no gradient:
    ratio below ``1 - eps_low`` with ``A < 0``, or above ``1 + eps_high`` with ``A > 0``)."""
    eps_high = eps_low if eps_high is None else eps_high
    old = logps.detach() if old_logps is None else old_logps
    ratio = torch.exp(logps - old)
    adv = advantages.view(-1, 1).to(logps.dtype)
    unclipped = ratio * adv
    clipped = torch.clamp(ratio, 1 - eps_low, 1 + eps_high) * adv
    loss = -torch.min(unclipped, clipped)
    kl = torch.zeros_like(logps)
    if beta and ref_logps is not None:
        delta = ref_logps - logps
        kl = torch.exp(delta) - delta - 1
        loss = loss + beta * kl
    is_clipped = ((ratio < 1 - eps_low) & (adv < 0)) | ((ratio > 1 + eps_high) & (adv > 0))
    return loss, {"kl": kl.detach(), "clipped": is_clipped.float(), "ratio": ratio.detach()}


def reduce_loss(token_loss: Tensor, mask: Tensor, loss_type: str, max_new: int) -> tuple[Tensor, Tensor]:
    """``(numerator, denominator)`` of one micro-batch's loss; the Trainer divides the sum of
    numerators by the sum of denominators over the whole step (micro-batches and ranks).

    ``dapo`` (TRL's default): every completion token of the step weighs the same;
    ``grpo``: each completion's mean token loss, averaged over completions (the paper);
    ``dr_grpo``: token losses summed over a completion, divided by ``max_new`` (Liu et al. 2025)."""
    masked = token_loss * mask
    rows = torch.tensor(float(mask.shape[0]), device=mask.device)
    if loss_type == "dapo":
        return masked.sum(), mask.sum()
    if loss_type == "grpo":
        return (masked.sum(-1) / mask.sum(-1).clamp(min=1.0)).sum(), rows
    if loss_type == "dr_grpo":
        return masked.sum(), rows * max_new
    raise ValueError(f"unknown loss_type {loss_type!r}; use dapo, grpo or dr_grpo")

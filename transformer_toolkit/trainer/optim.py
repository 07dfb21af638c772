"""AdamW with weight decay on matrices only, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import math

import torch
import torch.nn as nn

from .config import TrainConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: tensors with >= 2 dims (linear, embedding and stacked expert weights)
    decay; 1-D tensors (biases, norm scales) do not, since shrinking them towards 0 only hurts.
    Tied weights appear once (``named_parameters`` de-duplicates shared tensors)."""
    decay, no_decay = [], []
    for _, p in model.named_parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW over ``param_groups``; the fused kernel where the parameters' device has one
    (CUDA, CPU and MPS in recent PyTorch), the multi-tensor ``foreach`` path otherwise."""
    kwargs = dict(lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps)
    groups = param_groups(model, cfg.weight_decay)
    try:
        return torch.optim.AdamW(groups, fused=True, **kwargs)
    except (RuntimeError, ValueError, TypeError):  # no fused kernel for these tensors (e.g. DTensors)
        return torch.optim.AdamW(groups, foreach=True, **kwargs)


def lr_at(step: int, cfg: TrainConfig, elapsed: float | None = None) -> float:
    """The learning rate of optimizer step ``step`` (0-based, so the first step is 0).

    Linear warmup: ``lr * (step + 1) / warmup_steps`` for the first ``warmup_steps`` steps, then
    a cosine from ``lr`` down to exactly ``min_lr`` at the last step (``max_steps - 1``); steps
    past ``max_steps`` (a run extended on resume) stay at ``min_lr``. With ``cfg.max_time`` and
    ``elapsed`` (seconds trained so far) the cosine's progress is the larger of the step
    fraction and the time fraction ``elapsed / max_time``, so a run that will end on time still
    decays to ``min_lr`` when it ends.

    >>> cfg = TrainConfig(max_steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4)
    >>> lr_at(99, cfg), lr_at(999, cfg)
    (0.001, 0.0001)
    """
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    decay_steps = cfg.max_steps - cfg.warmup_steps
    if decay_steps <= 0:
        return cfg.lr
    progress = min(1.0, (step - cfg.warmup_steps + 1) / decay_steps)
    if cfg.max_time is not None and elapsed is not None:
        progress = max(progress, min(1.0, elapsed / cfg.max_time))
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)

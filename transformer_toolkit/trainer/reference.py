"""The frozen reference model of the post-training objectives (DPO's reference log-probs, GRPO's
KL term): the policy's starting weights, which never train.

It is copied before the Trainer moves, shards or wraps the policy (``frozen_copy``), then placed
like the policy (``place``: on its device, and sharded under FSDP2, where every rank runs its
forwards in step). Its fingerprint goes into the checkpoints, so that a resumed run checks it
still has the reference it started with (``same_reference``).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn as nn
from torch import Tensor

from ..store.checkpoint import fingerprint
from . import distributed as D


def frozen_copy(model: nn.Module, given: nn.Module | None = None) -> tuple[nn.Module, Tensor]:
    """``given``, or a copy of ``model`` as it is now, with every parameter frozen; and its
    fingerprint (for the checkpoints)."""
    ref = given if given is not None else copy.deepcopy(model)
    for p in ref.parameters():
        p.requires_grad_(False)
    return ref, fingerprint(list(ref.parameters()))


def place(ref: nn.Module, trainer) -> nn.Module:
    """``ref`` in eval mode on the trainer's device, sharded when the trainer runs FSDP2."""
    ref = ref.to(trainer.device).eval()
    if trainer.dist.enabled and trainer.cfg.parallel == "fsdp":
        D.shard_fsdp(ref)
    return ref


@contextmanager
def frozen_eval(model: nn.Module) -> Iterator[None]:
    """No grad, eval mode (no dropout: deterministic, and no RNG drawn); the mode is restored."""
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        model.train(was)


def same_reference(saved: Tensor | None, current: Tensor | None) -> bool:
    """Whether a checkpoint's reference fingerprint matches this run's (True when either has none)."""
    return saved is None or current is None or (
        saved.shape == current.shape and torch.allclose(saved, current, rtol=1e-6))

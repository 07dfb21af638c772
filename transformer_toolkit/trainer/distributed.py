"""Data parallelism under ``torchrun``: one process per device, the same ``Trainer`` code.

``torchrun --nproc_per_node=N train.py`` sets ``RANK``/``WORLD_SIZE``/``LOCAL_RANK``; the
Trainer then joins the process group (gloo on CPU, nccl on GPU) and wraps the model:

- ``parallel="ddp"`` (default): DistributedDataParallel. Every rank holds the whole model;
  gradients are averaged in backward (skipped with ``no_sync`` on all but the last micro-batch of
  an accumulated step).
- ``parallel="fsdp"``: FSDP2 ``fully_shard`` on every block and on the root, for a model that does
  not fit one device. Parameters, gradients and optimizer state are sharded across ranks;
  checkpoints are gathered into one full, ordinary state dict on rank 0, so they load anywhere.

Each rank must see its own shard of the data. The ``transformer_toolkit.data`` loaders shard
themselves by rank when they are built after the process group exists: call
``init_distributed()`` before building them.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn as nn


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (a no-op in a single process).

    >>> info = init_distributed()   # before building the loaders
    >>> info.rank, info.world_size  # doctest: +SKIP
    """
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world <= 1:
        return DistInfo()
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if backend is None:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank)


def loader_world_size(loader) -> int | None:
    """How many ranks ``loader`` was built to shard over, when it says (None when unknown)."""
    for obj in (loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
        for attr in ("world_size", "num_replicas"):
            value = getattr(obj, attr, None)
            if isinstance(value, int):
                return value
    return None


def check_sharded(loader, name: str, info: DistInfo) -> None:
    """Refuse a loader built for another world size: every rank would train on the same batches."""
    if not info.enabled or loader is None:
        return
    ws = loader_world_size(loader)
    if ws is None:
        warnings.warn(f"cannot tell whether {name} is sharded by rank; the Trainer assumes each rank's {name} "
                      "yields that rank's own batches (use a DistributedSampler or the transformer_toolkit.data "
                      "loaders)", stacklevel=3)
    elif ws != info.world_size:
        raise ValueError(f"{name} shards over world_size={ws} but this run has {info.world_size} processes, so ranks "
                         "would not see disjoint data; build the loaders after "
                         "transformer_toolkit.trainer.init_distributed()")


def shard_fsdp(model: nn.Module) -> None:
    """FSDP2: shard every block, then the root (embedding, final norm, head), in place. Only one
    block's full weights exist at a time in forward and backward."""
    from torch.distributed.fsdp import fully_shard

    for block in getattr(model, "blocks", []):
        fully_shard(block)
    fully_shard(model)


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[device.index] if device.type == "cuda" else None)


def sync_context(train_model: nn.Module, sync: bool):
    """Skip the gradient all-reduce (``sync=False``) on all but the last micro-batch of a step."""
    if hasattr(train_model, "no_sync"):  # DDP
        return contextlib.nullcontext() if sync else train_model.no_sync()
    if hasattr(train_model, "set_requires_gradient_sync"):  # FSDP2
        train_model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def all_reduce_sum(t: torch.Tensor, info: DistInfo) -> torch.Tensor:
    if info.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_objects(obj, info: DistInfo) -> list:
    """``[obj of rank 0, obj of rank 1, ...]`` on every rank (small objects: RNG and loader state)."""
    if not info.enabled:
        return [obj]
    out = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


_BARRIER: dict = {}  # the gloo barrier's flag tensor and its last Work, kept alive on purpose


def barrier(info: DistInfo) -> None:
    """Wait for every rank.

    On gloo this is an all-reduce whose Work object Python keeps until the next barrier, not
    ``dist.barrier()``. Gloo frees a finished collective on its own thread, and with torch 2.13
    freeing the tensors a Python caller passed in takes the GIL. If the main thread is meanwhile
    tearing the process group down (``destroy_process_group`` or the DDP wrapper being freed), it
    holds the GIL while it joins that thread and the process hangs (3 hangs in 32 two-process
    runs before this barrier; none in 100 after). A Work that Python still references is not
    freed on gloo's thread, so this barrier can end a run safely, and while it waits (without the
    GIL) gloo frees the collectives before it. ``Trainer.train`` ends with one."""
    if not info.enabled:
        return
    if dist.get_backend() != "gloo":
        dist.barrier()
        return
    flag = _BARRIER.setdefault("flag", torch.zeros(1))
    work = dist.all_reduce(flag, async_op=True)
    work.wait()
    _BARRIER["work"] = work  # the previous barrier's Work is freed here, on this thread


def broadcast_object(obj, info: DistInfo):
    """Rank 0's ``obj`` on every rank."""
    if not info.enabled:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def is_sharded(model: nn.Module) -> bool:
    return any(type(p).__name__ == "DTensor" for p in model.parameters())


def full_state(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """Ordinary (unsharded) model and optimizer state dicts; with FSDP2 every rank must call this
    (the shards are gathered to CPU; the result is complete on rank 0)."""
    if not is_sharded(model):
        return model.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, cpu_offload=True)
    return get_model_state_dict(model, options=opts), get_optimizer_state_dict(model, optimizer, options=opts)


def load_full_state(model: nn.Module, optimizer: torch.optim.Optimizer, model_sd: dict, optim_sd: dict,
                    strict: bool = True) -> None:
    """Load ordinary state dicts into a possibly FSDP2-sharded model and its optimizer
    (``strict=False``: ``model_sd`` holds the trainable parameters only)."""
    if not is_sharded(model):
        model.load_state_dict(model_sd, strict=strict)
        optimizer.load_state_dict(optim_sd)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    opts = StateDictOptions(full_state_dict=True, strict=strict)
    set_model_state_dict(model, model_sd, options=opts)
    set_optimizer_state_dict(model, optimizer, optim_sd, options=opts)

"""LoRA runs on disk: a checkpoint that holds adapters only, put back on its base model.

A Trainer checkpoint of an adapted model (``lora.apply_lora``) holds the trainable parameters
only (``model``), a fingerprint of the frozen base weights (``frozen``) and ``adapter`` (the LoRA
config and ``base``, where the base weights came from: a pretrained model, a run folder or
checkpoint, itself possibly a LoRA run, or a Hub repo id). ``load`` (load.py) loads that base
and hands it here with the checkpoint.
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn

from ..lora import LoRAConfig, apply_lora, load_adapter_state, merge_and_unload
from .checkpoint import fingerprint


def is_adapter_checkpoint(ckpt: dict) -> bool:
    """Whether ``ckpt`` is a LoRA run's checkpoint (adapters only, on a recorded base)."""
    return isinstance(ckpt, dict) and ckpt.get("adapter") is not None and ckpt.get("frozen") is not None


def base_source(ckpt: dict, path: str | os.PathLike) -> str:
    """Where the base weights of the LoRA checkpoint ``ckpt`` (read from ``path``) came from."""
    base = ckpt["adapter"].get("base")
    if not base:
        raise ValueError(f"{os.fspath(path)} holds LoRA adapters but no record of its base model; pass base= (the "
                         "model or path the run started from)")
    return base


def adapt(model: nn.Module, ckpt: dict, path: str | os.PathLike, merged: bool = True) -> nn.Module:
    """``model`` (the base, in place) with the checkpoint's adapters on it, in eval mode; merged
    into the weights when ``merged`` (an ordinary model then), else kept as adapters.

    The base must be the weights the adapters were trained on: their fingerprint is checked."""
    info = ckpt["adapter"]
    apply_lora(model, LoRAConfig(**info["config"]), base=info.get("base"))
    frozen = fingerprint([p for p in model.parameters() if not p.requires_grad])
    saved = ckpt["frozen"]
    if frozen.shape != saved.shape or not torch.allclose(frozen, saved, rtol=1e-6):
        raise ValueError(f"{os.fspath(path)}: its adapters were trained on other base weights than these (base "
                         f"{info.get('base')!r}); pass base= the model or path the run started from")
    load_adapter_state(model, ckpt["model"])
    return (merge_and_unload(model) if merged else model).eval()

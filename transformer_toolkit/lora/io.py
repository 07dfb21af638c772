"""Adapters on disk: our own folder.

An adapter folder holds ``adapter.json`` (the LoRA config, the base model's config and where the
base weights came from) and ``adapter.safetensors`` (the adapter weights only, under our state
dict names). For other tools see peft.py (a PEFT folder) and gguf.py (a llama.cpp LoRA GGUF).

A checkpoint of a LoRA run (``Trainer`` with an adapted model) holds the adapters only, plus
``adapter["base"]``: ``store.load(path)`` loads that base and puts the adapters on it (merged,
or kept as adapters with ``merged=False``; see store/adapted.py).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch.nn as nn

from ..atomic import atomic_write_text
from .apply import adapter_state_dict, adapters, apply_lora, load_adapter_state
from .config import LoRAConfig

FORMAT = "transformer_toolkit.lora"


def _info(model: nn.Module) -> dict:
    info = getattr(model, "adapter_info", None)
    if not adapters(model) or info is None:
        raise ValueError("this model has no LoRA adapters; add them with apply_lora(model, LoRAConfig(...))")
    return info


def save_adapter(model: nn.Module, folder: str | os.PathLike) -> str:
    """Write the model's adapters (only they) to ``folder``; returns the folder."""
    from safetensors.torch import save_file

    info = _info(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    weights = {k: v.detach().cpu().contiguous() for k, v in adapter_state_dict(model).items()}
    cfg = getattr(model, "cfg", None)
    tmp = folder / "adapter.safetensors.tmp"
    save_file(weights, str(tmp), metadata={"format": "pt"})
    os.replace(tmp, folder / "adapter.safetensors")
    meta = {"format": FORMAT, "lora": info["config"], "base": info["base"],
            "model_config": cfg.to_dict() if hasattr(cfg, "to_dict") else None}
    atomic_write_text(folder / "adapter.json", json.dumps(meta, indent=2) + "\n")
    return os.fspath(folder)


def load_adapter(model: nn.Module, folder: str | os.PathLike) -> nn.Module:
    """Put the adapters saved in ``folder`` on ``model`` (its base), adding them first when the
    model has none; returns the model."""
    from safetensors.torch import load_file

    folder = Path(folder)
    if not (folder / "adapter.json").is_file():
        raise FileNotFoundError(f"no adapter.json in {os.fspath(folder)!r}; save one with lora.save_adapter")
    meta = json.loads((folder / "adapter.json").read_text(encoding="utf-8"))
    if not adapters(model):
        apply_lora(model, LoRAConfig(**meta["lora"]), base=meta.get("base"))
    load_adapter_state(model, load_file(str(folder / "adapter.safetensors")))
    return model

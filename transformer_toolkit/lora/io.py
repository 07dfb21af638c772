"""Adapters on disk: our own folder, and rebuilding an adapted model from a training checkpoint.

An adapter folder holds ``adapter.json`` (the LoRA config, the base model's config and where the
base weights came from) and ``adapter.safetensors`` (the adapter weights only, under our state
dict names). For other tools see peft.py (a PEFT folder) and gguf.py (a llama.cpp LoRA GGUF).

A checkpoint of a LoRA run (``Trainer`` with an adapted model) holds the adapters only, plus
``adapter["base"]``: ``load_checkpoint`` loads that base (a pretrained model, a run folder or
checkpoint, itself possibly a LoRA run) and puts the adapters on it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import atomic_write_text
from .apply import adapter_state_dict, adapters, apply_lora, load_adapter_state, merge_and_unload
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


def load_base(source: str | os.PathLike) -> nn.Module:
    """A base model by path: a pretrained model (``.gguf``, a folder with config.json) or a run
    folder / checkpoint (a LoRA run's adapters merged in)."""
    from ..model import Transformer

    p = Path(source)
    if (p.suffix == ".gguf" and p.is_file()) or (p.is_dir() and (p / "config.json").is_file()):
        return Transformer.from_pretrained(p)
    return load_checkpoint(p, merged=True)


def is_adapter_checkpoint(ckpt: dict) -> bool:
    return isinstance(ckpt, dict) and ckpt.get("adapter") is not None and ckpt.get("frozen") is not None


def load_checkpoint(path: str | os.PathLike, base: nn.Module | str | None = None, merged: bool = False) -> nn.Module:
    """The model of a training checkpoint or run folder in eval mode; for a LoRA run its base
    (``base``, else the source recorded at training) with the adapters on it, merged into the
    weights when ``merged`` (an ordinary model then)."""
    from ..model import Transformer
    from ..model.loading import resolve_checkpoint
    from ..trainer.checkpoint import fingerprint, read_ckpt

    ckpt_path = resolve_checkpoint(path)
    ckpt = read_ckpt(ckpt_path, mmap=True)
    if not is_adapter_checkpoint(ckpt):
        return Transformer.from_checkpoint(ckpt_path)
    info = ckpt["adapter"]
    if base is None:
        if not info.get("base"):
            raise ValueError(f"{ckpt_path} holds LoRA adapters but no record of its base model; pass base= (the "
                             "model or path the run started from)")
        if not os.path.exists(info["base"]):
            raise FileNotFoundError(f"{ckpt_path} holds LoRA adapters for the base {info['base']!r}, which no longer "
                                    "exists; pass base= (the model or path the run started from)")
        base = info["base"]
    model = load_base(base) if isinstance(base, (str, os.PathLike)) else base
    apply_lora(model, LoRAConfig(**info["config"]), base=info.get("base"))
    frozen = fingerprint([p for p in model.parameters() if not p.requires_grad])
    if frozen.shape != ckpt["frozen"].shape or not torch.allclose(frozen, ckpt["frozen"], rtol=1e-6):
        raise ValueError(f"{ckpt_path}: its adapters were trained on other base weights than {base!r}'s; pass the "
                         "base model the run started from")
    load_adapter_state(model, ckpt["model"])
    return (merge_and_unload(model) if merged else model).eval()

"""Rebuild a Transformer from a checkpoint or a run folder (what ``Transformer.from_checkpoint`` does).

A checkpoint stores its architecture as a plain dict (``"model_config"``), so the model can be
rebuilt without the code or YAML that trained it, and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class _NoParameterInit(TorchFunctionMode):
    """Inside: filling a parameter in place (what ``nn.init`` and the modules' own
    initialisers do) is skipped. Buffers are still computed. The mode is this thread's only."""

    # nn.init's random fills hand themselves to the mode whole (tensor as a keyword); the rest
    # reach it as the tensor methods they call
    FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
             nn.init.normal_, nn.init.uniform_, nn.init.trunc_normal_, nn.init.kaiming_uniform_,
             nn.init.kaiming_normal_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if func in self.FILLS and isinstance(target, nn.Parameter):
            return target
        return func(*args, **kwargs)


def empty_transformer(cfg):
    """A ``Transformer`` of ``cfg`` whose parameters are left as allocated, not initialised: only
    for a strict ``load_state_dict`` of every weight straight after, which the checkpoint, native,
    transformers and GGUF loaders do. The random init it skips took most of loading a
    pretrained model: 1.1 of 1.8 s for SmolLM2-135M from its GGUF file, 1.1 of 1.1 s from a
    safetensors folder (``bench/bench_load.py``)."""
    from .transformer import Transformer

    with _NoParameterInit():
        return Transformer(cfg)


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The .pt file meant by ``path``: the file itself, or for a run folder (or its
    ``checkpoints/``) best.pt, else the newest of pause.pt / step_N.pt."""
    from ..trainer.checkpoint import latest_ckpt

    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no checkpoint or run folder at {os.fspath(path)!r}; check the path")
    for folder in (p / "checkpoints", p):
        if (folder / "best.pt").is_file():
            return folder / "best.pt"
        if folder.is_dir():
            latest = latest_ckpt(folder)
            if latest is not None:
                return Path(latest)
    raise FileNotFoundError(f"{os.fspath(path)!r} holds no checkpoint (best.pt, pause.pt or step_N.pt, "
                            "directly or under checkpoints/)")


def load_transformer(path: str | os.PathLike, map_location="cpu"):
    """A Transformer built from the checkpoint's ``model_config`` with its weights loaded, in eval mode."""
    from ..trainer.checkpoint import load_model_state, read_ckpt
    from .config import TransformerConfig

    ckpt_path = resolve_checkpoint(path)
    # to the CPU memory-mapped: only the weights' pages are read, never the optimiser state
    # (twice the model again for AdamW): 1.07 -> 0.18 s and half the peak memory for 517 MB
    on_cpu = isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "cpu"
    ckpt = read_ckpt(ckpt_path, map_location=map_location, mmap=on_cpu)
    if ckpt.get("frozen") is not None:
        raise ValueError(f"{ckpt_path} holds trainable parameters only (LoRA adapters); load it with "
                         "transformer_toolkit.lora.load_checkpoint(path), which puts them on their base model")
    if not ckpt.get("model_config"):
        raise ValueError(f"{ckpt_path} has no 'model_config'; build the model yourself and use load_ckpt")
    model = empty_transformer(TransformerConfig.from_dict(ckpt["model_config"]))
    load_model_state(ckpt, model, ckpt_path)  # strict: every weight is loaded
    return model.eval()


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder of a run folder or of a checkpoint inside ``<run>/checkpoints/``."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    return p.parent if p.name == "checkpoints" else p


__all__ = ["empty_transformer", "load_transformer", "resolve_checkpoint", "run_dir_of"]

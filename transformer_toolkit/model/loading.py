"""Rebuild a Transformer from a checkpoint or a run folder (what ``Transformer.from_checkpoint`` does).

A checkpoint stores its architecture as a plain dict (``"model_config"``), so the model can be
rebuilt without the code or YAML that trained it, and loaded with ``weights_only=True``.
"""

from __future__ import annotations

import os
from pathlib import Path


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
    from .transformer import Transformer

    ckpt_path = resolve_checkpoint(path)
    ckpt = read_ckpt(ckpt_path, map_location=map_location)
    if not ckpt.get("model_config"):
        raise ValueError(f"{ckpt_path} has no 'model_config'; build the model yourself and use load_ckpt")
    model = Transformer(TransformerConfig.from_dict(ckpt["model_config"]))
    load_model_state(ckpt, model, ckpt_path)
    return model.eval()


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder of a run folder or of a checkpoint inside ``<run>/checkpoints/``."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    return p.parent if p.name == "checkpoints" else p


__all__ = ["load_transformer", "resolve_checkpoint", "run_dir_of"]

"""Run folders: what ``ttk train`` and ``ttk sft`` write, and what every other command reads.

::

    runs/NAME/
      config.yaml      the resolved run config (every model, train and data field filled in)
      tokenizer.json   ours; a pretrained model's tokenizer is kept as its transformers files
      checkpoints/     best.pt, step_N.pt, pause.pt (see checkpoint.py)
      metrics.jsonl, loss.png, data/tokens.bin

A run folder or any checkpoint inside it is enough to rebuild the model (the checkpoint holds
its config), the tokenizer and the chat template it was fine-tuned with.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import yaml

from ..atomic import atomic_write_text
from ..convert.hf_io import write_tokenizer
from ..tokenizer import ByteLevelTokenizer, RustBPETokenizer
from ..tokenizer import load_tokenizer as load_any_tokenizer
from ..tokenizer.templates import ChatTemplate
from .checkpoint import latest_ckpt, read_ckpt

CONFIG, TOKENIZER, CHECKPOINTS = "config.yaml", "tokenizer.json", "checkpoints"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The .pt file meant by ``path``: the file itself, or for a run folder (or its
    ``checkpoints/``) best.pt, else the newest of pause.pt / step_N.pt."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no checkpoint or run folder at {os.fspath(path)!r}; check the path")
    for folder in (p / CHECKPOINTS, p):
        if (folder / "best.pt").is_file():
            return folder / "best.pt"
        if folder.is_dir():
            latest = latest_ckpt(folder)
            if latest is not None:
                return Path(latest)
    raise FileNotFoundError(f"{os.fspath(path)!r} holds no checkpoint (best.pt, pause.pt or step_N.pt, "
                            f"directly or under {CHECKPOINTS}/)")


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder of a run folder or of a checkpoint inside ``<run>/checkpoints/``."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    return p.parent if p.name == CHECKPOINTS else p


def read_config(run_dir: str | os.PathLike) -> dict:
    """The run's config.yaml as a dict ({} when the folder has none, e.g. a bare checkpoint folder)."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    return yaml.safe_load(path.read_text(encoding="utf-8")) or {}


def write_config(config: dict, run_dir: str | os.PathLike) -> None:
    """Write config.yaml atomically (a crash never leaves half a config next to the checkpoints)."""
    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False))


def template(run_config: dict):
    """The chat template a run was fine-tuned with, as config.yaml stores it (a ChatTemplate for a
    dict, a preset name as is); None for a pretraining run."""
    t = (run_config.get("data") or {}).get("template")
    return ChatTemplate.from_dict(t) if isinstance(t, dict) else t


def load_tokenizer(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None):
    """The run's tokenizer: a pretrained model's transformers files (``ttk sft --model``) or our
    tokenizer.json, in the run folder or next to ``checkpoint``."""
    folders = [Path(run_dir)] + ([Path(checkpoint).parent] if checkpoint is not None else [])
    for folder in folders:
        if (folder / "tokenizer_config.json").is_file():
            return load_any_tokenizer(folder)
        if (folder / TOKENIZER).is_file():
            return load_any_tokenizer(folder / TOKENIZER)
    raise FileNotFoundError(f"no {TOKENIZER} in {os.fspath(run_dir)} "
                            f"{'' if checkpoint is None else f'or next to {os.fspath(checkpoint)}'}".rstrip())


def save_tokenizer(tokenizer, run_dir: str | os.PathLike) -> None:
    """Keep the tokenizer in a run folder: ours as tokenizer.json, a transformers one (from a
    pretrained model) as its tokenizer files, which ``load_tokenizer`` reads back."""
    if isinstance(tokenizer, (RustBPETokenizer, ByteLevelTokenizer)):
        tokenizer.save(str(Path(run_dir) / TOKENIZER))
    else:
        write_tokenizer(tokenizer, os.fspath(run_dir))


def metrics(checkpoint: str | os.PathLike) -> tuple[dict, int | None]:
    """``(metrics, step)`` stored in a checkpoint: val_loss, best_val_loss and its perplexity
    (memory-mapped: the numbers are read, not the weights)."""
    ckpt = read_ckpt(checkpoint, mmap=True)
    out = {}
    for key in ("val_loss", "best_val_loss"):
        v = ckpt.get(key)
        if v is not None and math.isfinite(float(v)):
            out[key] = float(v)
    if "best_val_loss" in out:
        out["perplexity"] = math.exp(min(out["best_val_loss"], 50.0))
    return out, ckpt.get("step")

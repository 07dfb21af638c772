"""One entry point for pretrained weights: a transformers folder, a native folder or a GGUF file.

``Transformer.from_pretrained(path)`` calls ``load_model``; ``write_model_folder`` is what the
Hub upload writes (a transformers folder when the config has an exact counterpart, else a
native one).
"""

from __future__ import annotations

import os

import torch

from ..model.transformer import Transformer
from .hf_config import to_hf_config
from .hf_io import load_pretrained, save_pretrained
from .native import is_native, load_native, save_native


def gguf_module():
    """``transformer_toolkit.convert.gguf``, imported on first use (its functions import the
    ``gguf`` package, through ``optional.require``)."""
    from . import gguf

    return gguf


def load_model(path: str | os.PathLike, dtype: torch.dtype | None = None, **overrides) -> Transformer:
    """The model at ``path`` in eval mode: a ``.gguf`` file, a native folder, or a transformers
    folder (Llama / Mistral / Qwen2 / SmolLM / GPT-2 / Mixtral). ``overrides`` replace config
    fields (e.g. ``max_seq=512``)."""
    p = os.fspath(path)
    if p.endswith(".gguf"):
        if not os.path.isfile(p):
            raise FileNotFoundError(f"no GGUF file at {p}")
        return gguf_module().load_gguf(p, dtype=dtype, **overrides)
    if not os.path.isdir(p):
        raise FileNotFoundError(f"no model folder or .gguf file at {p!r}; to fetch a Hub repo first run "
                                "transformer_toolkit.hf_hub.pull_from_hub(repo_id, save_dir=...)")
    if is_native(p):
        return load_native(p, dtype, **overrides)
    return load_pretrained(p, dtype, **overrides)


def export_blocker(cfg) -> str | None:
    """None when ``cfg`` has an exact transformers counterpart, else the reason it has none."""
    try:
        to_hf_config(cfg)
    except ValueError as e:
        return str(e)
    return None


def write_model_folder(model: Transformer, out_dir: str | os.PathLike, tokenizer=None, template=None) -> str:
    """A transformers folder when possible, else a native one. Returns ``"transformers"`` or ``"native"``."""
    reason = export_blocker(model.cfg)
    if reason is None:
        save_pretrained(model, out_dir, tokenizer, template)
        return "transformers"
    save_native(model, out_dir, tokenizer, template, reason=reason)
    return "native"

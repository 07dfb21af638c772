"""Choosing a format: ``write_model_folder`` is what the Hub upload writes (a transformers folder
when the config has an exact counterpart, else a native one); ``gguf_module`` / ``save_gguf``
import the GGUF code only when it is used. Reading any format is ``store.load``.
"""

from __future__ import annotations

import os

from ..model.transformer import Transformer
from .hf_config import to_hf_config
from .hf_io import save_pretrained
from .native import save_native


def gguf_module():
    """``transformer_toolkit.convert.gguf``, imported on first use (its functions import the
    ``gguf`` package, through ``optional.require``)."""
    from . import gguf

    return gguf


def save_gguf(model: Transformer, path: str | os.PathLike, tokenizer=None, template=None, dtype: str = "f16") -> str:
    """``gguf.save_gguf`` (what ``Transformer.save_gguf`` calls), the module imported on first use."""
    return gguf_module().save_gguf(model, path, tokenizer=tokenizer, template=template, dtype=dtype)


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

"""load_tokenizer(path): rebuild whichever tokenizer was saved at ``path``."""

from __future__ import annotations

import json
import os

from .base import SPECIAL_TOKENS
from .bpe import RustBPETokenizer
from .byte_level import _KIND as BYTE_LEVEL_KIND
from .byte_level import ByteLevelTokenizer
from .hf import HFTokenizer

_HF_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model")


def load_tokenizer(path: str | os.PathLike):
    """Return the right tokenizer for a saved file or folder.

    - a JSON file saved by ``ByteLevelTokenizer.save`` -> ByteLevelTokenizer
    - a ``tokenizer.json`` (file, or a folder holding one) with the project's special tokens
      at ids 0..20 -> RustBPETokenizer
    - any other transformers tokenizer folder or ``tokenizer.json`` -> HFTokenizer
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        inner = os.path.join(path, "tokenizer.json")
        if os.path.isfile(inner) and _kind(inner) in ("byte_level", "ours"):
            return load_tokenizer(inner)
        if any(os.path.isfile(os.path.join(path, f)) for f in _HF_FILES):
            return HFTokenizer(path)
        raise FileNotFoundError(f"{path} holds no tokenizer: expected tokenizer.json or a transformers "
                                "tokenizer folder (tokenizer_config.json)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no tokenizer at {path}")
    kind = _kind(path)
    if kind == "byte_level":
        return ByteLevelTokenizer().load(path)
    if kind == "ours":
        return RustBPETokenizer().load(path)
    if kind == "hf":
        return HFTokenizer(path)
    raise ValueError(f"{path} is not a tokenizer file this library knows: expected a tokenizer.json "
                     "(Hugging Face tokenizers format) or a file saved by ByteLevelTokenizer.save")


def _kind(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if data.get("type") == BYTE_LEVEL_KIND:
        return "byte_level"
    if "model" not in data:
        return None
    added = {t.get("content"): t.get("id") for t in data.get("added_tokens", [])}
    ours = all(added.get(tok) == i for i, tok in enumerate(SPECIAL_TOKENS))
    return "ours" if ours else "hf"

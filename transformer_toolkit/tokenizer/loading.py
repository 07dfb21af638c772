"""load_tokenizer(path): rebuild whichever tokenizer was saved at ``path``."""

from __future__ import annotations

import json
import os

from ..config_base import read_json_object
from .base import BOS_ID, EOS_ID, PAD_ID, SPECIAL_TOKENS
from .bpe import RustBPETokenizer
from .byte_level import _KIND as BYTE_LEVEL_KIND
from .byte_level import ByteLevelTokenizer
from .hf import HFTokenizer

_HF_FILES = ("tokenizer_config.json", "tokenizer.json", "vocab.json", "tokenizer.model")


def load_tokenizer(path: str | os.PathLike):
    """Return the right tokenizer for a saved file or folder.

    - a JSON file saved by ``ByteLevelTokenizer.save`` -> ByteLevelTokenizer
    - a ``tokenizer.json`` (file, or a folder holding one) with the project's special tokens
      at ids 0..20 -> RustBPETokenizer (a transformers folder written by ``save_pretrained``
      too, unless its tokenizer_config.json names other bos/eos/pad tokens)
    - any other transformers tokenizer folder or ``tokenizer.json`` -> HFTokenizer (bos/eos/pad
      ids from tokenizer_config.json)
    - a ``.gguf`` file -> the tokenizer stored in its metadata (``convert.gguf.gguf_tokenizer``)

    From a folder, the chat template (``chat_template.jinja`` or tokenizer_config.json) is
    available as ``tok.chat_template`` (None when there is none).
    """
    path = os.fspath(path)
    if path.endswith(".gguf") and os.path.isfile(path):
        from ..convert.auto import gguf_module

        return gguf_module().gguf_tokenizer(path)
    if os.path.isdir(path):
        inner = os.path.join(path, "tokenizer.json")
        kind = _kind(inner) if os.path.isfile(inner) else None
        if kind == "byte_level" or (kind == "ours" and _config_agrees(path)):
            tok = load_tokenizer(inner)
            tok.chat_template = folder_chat_template(path)
            return tok
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
                     "(Hugging Face tokenizers format), a .gguf file, or a file saved by ByteLevelTokenizer.save")


def _config_agrees(folder: str) -> bool:
    """False when tokenizer_config.json names bos/eos/pad tokens other than ours (then the
    folder's own settings win, through HFTokenizer)."""
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return True
    cfg = _read_config(cfg_path)
    for key, i in (("bos_token", BOS_ID), ("eos_token", EOS_ID), ("pad_token", PAD_ID)):
        value = cfg.get(key)
        if isinstance(value, dict):  # AddedToken written as a dict
            value = value.get("content")
        if value is not None and value != SPECIAL_TOKENS[i]:
            return False
    return True


def folder_chat_template(folder: str | os.PathLike) -> str | None:
    """The Jinja chat template stored in a tokenizer folder: ``chat_template.jinja``
    (transformers >= 5) or ``tokenizer_config.json``'s ``chat_template``; None when there is none."""
    jinja = os.path.join(folder, "chat_template.jinja")
    if os.path.isfile(jinja):
        with open(jinja, encoding="utf-8") as f:
            return f.read()
    cfg_path = os.path.join(folder, "tokenizer_config.json")
    if not os.path.isfile(cfg_path):
        return None
    t = _read_config(cfg_path).get("chat_template")
    if isinstance(t, list):  # named templates: [{"name": "default", "template": ...}, ...]
        named = {d.get("name"): d.get("template") for d in t if isinstance(d, dict)}
        t = named.get("default") or next(iter(named.values()), None)
    return t if isinstance(t, str) else None


def _read_config(path: str) -> dict:
    """A tokenizer_config.json: a JSON object, or ValueError naming the file."""
    return read_json_object(path, "restore the tokenizer files")


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

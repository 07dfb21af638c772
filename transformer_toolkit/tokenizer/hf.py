"""HFTokenizer: any Hugging Face pretrained tokenizer behind the project's protocol.

``HFTokenizer("gpt2")`` loads from the Hub (or its cache); a local folder written by
``save_pretrained`` (or a lone ``tokenizer.json``) loads offline. The transformers tokenizer
itself stays available as ``tok._tok`` (the seed README uses ``tok._tok.bos_token_id``).

A folder's own Python code is never run: transformers is always called with
``trust_remote_code=False``, so a ``tokenizer_config.json`` whose ``auto_map`` names a class
defined in the folder's ``.py`` files is refused (with the reason) instead of asking, on the
terminal, whether to run it.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable, Sequence

from ..optional import require
from .base import as_id_list


def _transformers():
    return require("transformers", "HFTokenizer", "hf")


def _auto_map(folder: str) -> dict | None:
    """The ``auto_map`` (classes defined in the folder's own ``.py`` files) of a local folder's
    tokenizer_config.json or config.json, or None."""
    for name in ("tokenizer_config.json", "config.json"):
        path = os.path.join(folder, name)
        try:
            with open(path, encoding="utf-8") as f:
                found = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(found, dict) and found.get("auto_map"):
            return found["auto_map"]
    return None


def _damaged(name: str, e: Exception) -> ValueError:
    """tokenizers and transformers report a damaged tokenizer file as a KeyError, TypeError,
    ValueError or a bare Exception from Rust: one message naming the file instead."""
    first = (str(e).strip().splitlines() or [""])[0]
    return ValueError(f"the tokenizer at {name} cannot be read ({type(e).__name__}: {first}); its files are "
                      "damaged or incomplete: restore them, or load another tokenizer")


class HFTokenizer:
    """Wrap ``transformers.AutoTokenizer``. ``encode`` adds no BOS/EOS; the data loaders add
    them explicitly where asked (pass ``add_special_tokens=True`` to get the model's own)."""

    def __init__(self, name_or_path: str | os.PathLike, **kwargs):
        self.name_or_path = os.fspath(name_or_path)
        self._tok = self._load(self.name_or_path, **kwargs)

    @staticmethod
    def _load(name: str, **kwargs):
        tf = _transformers()
        if os.path.isfile(name) and name.endswith(".json"):
            try:
                return tf.PreTrainedTokenizerFast(tokenizer_file=name, **kwargs)
            except Exception as e:  # noqa: BLE001 - see _damaged
                raise _damaged(name, e) from None
        auto_map = _auto_map(name)
        try:
            tok = tf.AutoTokenizer.from_pretrained(name, **kwargs, trust_remote_code=False)
        except OSError as e:
            where = "the local folder" if os.path.isdir(name) else "the Hub (is the name right and the network up?)"
            raise OSError(f"could not load a tokenizer from {name!r} via {where}: {e}") from e
        except ValueError as e:
            if "trust_remote_code" not in str(e):
                raise _damaged(name, e) from None
            raise ValueError(f"{name}'s tokenizer is defined by its own Python code (auto_map {auto_map or '?'}), "
                             "which transformer-toolkit never runs; use a tokenizer that loads without it (a "
                             "tokenizer.json with tokenizer_class PreTrainedTokenizerFast)") from None
        except Exception as e:  # noqa: BLE001 - see _damaged
            raise _damaged(name, e) from None
        if auto_map:
            warnings.warn(f"{name}: ignoring auto_map {auto_map} in its tokenizer config (a model folder's own "
                          f"code is never run); loaded with transformers' {type(tok).__name__}", RuntimeWarning,
                          stacklevel=3)
        return tok

    @property
    def vocab_size(self) -> int:
        return len(self._tok)  # counts added tokens, whose ids lie past the base vocabulary

    @property
    def bos_id(self) -> int | None:
        return self._tok.bos_token_id

    @property
    def eos_id(self) -> int | None:
        return self._tok.eos_token_id

    @property
    def pad_id(self) -> int | None:
        return self._tok.pad_token_id

    @property
    def chat_template(self) -> str | None:
        return getattr(self._tok, "chat_template", None)

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return self._tok.encode(text, add_special_tokens=add_special_tokens)

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids and the ``(start, end)`` character span of each (needs a fast tokenizer)."""
        if not getattr(self._tok, "is_fast", False):
            raise ValueError(f"{self.name_or_path}: token offsets need a fast (Rust) tokenizer; "
                             "this one is a slow Python tokenizer")
        enc = self._tok(text, add_special_tokens=False, return_offsets_mapping=True)
        return enc["input_ids"], [tuple(o) for o in enc["offset_mapping"]]

    def encode_batch(self, texts: Sequence[str], add_special_tokens: bool = False) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=add_special_tokens)["input_ids"]

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        return self._tok.decode(as_id_list(ids), skip_special_tokens=skip_special_tokens)

    def token_to_id(self, token: str) -> int | None:
        i = self._tok.convert_tokens_to_ids(token)
        return None if i == self._tok.unk_token_id and token != self._tok.unk_token else i

    def save(self, path: str | os.PathLike) -> None:
        """Write the tokenizer folder (``save_pretrained``)."""
        self._tok.save_pretrained(os.fspath(path))

    def load(self, path: str | os.PathLike) -> HFTokenizer:
        self.name_or_path = os.fspath(path)
        self._tok = self._load(self.name_or_path)
        return self

    def __repr__(self) -> str:
        return f"HFTokenizer({self.name_or_path!r}, vocab_size={self.vocab_size})"

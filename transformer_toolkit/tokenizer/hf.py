"""HFTokenizer: any Hugging Face pretrained tokenizer behind the project's protocol.

``HFTokenizer("gpt2")`` loads from the Hub (or its cache); a local folder written by
``save_pretrained`` (or a lone ``tokenizer.json``) loads offline. The transformers tokenizer
itself stays available as ``tok._tok`` (the seed README uses ``tok._tok.bos_token_id``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

from ..optional import require
from .base import as_id_list


def _transformers():
    return require("transformers", "HFTokenizer", "hf")


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
            return tf.PreTrainedTokenizerFast(tokenizer_file=name, **kwargs)
        try:
            return tf.AutoTokenizer.from_pretrained(name, **kwargs)
        except OSError as e:
            where = "the local folder" if os.path.isdir(name) else "the Hub (is the name right and the network up?)"
            raise OSError(f"could not load a tokenizer from {name!r} via {where}: {e}") from e

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

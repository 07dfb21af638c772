"""ByteLevelTokenizer: every UTF-8 byte is one token (ids 0..255), no training, no dependencies."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Sequence

from ..atomic import atomic_write_text
from .base import as_id_list

_KIND = "transformer_toolkit.ByteLevelTokenizer"


class ByteLevelTokenizer:
    """Text to UTF-8 bytes and back.

    >>> tok = ByteLevelTokenizer()
    >>> tok.encode("Hi")
    [72, 105]
    >>> tok.decode([72, 105])
    'Hi'

    It has no special tokens, so ``bos_id``, ``eos_id`` and ``pad_id`` are None. ``decode``
    replaces a byte sequence that is not valid UTF-8 (a model can sample one) with U+FFFD.
    """

    vocab_size = 256
    bos_id = None
    eos_id = None
    pad_id = None

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """Ids plus, per id, the ``(start, end)`` character span of ``text`` it came from (every
        byte of a multi-byte character points at that character)."""
        ids, offsets = [], []
        for j, ch in enumerate(text):
            b = ch.encode("utf-8")
            ids.extend(b)
            offsets.extend([(j, j + 1)] * len(b))
        return ids, offsets

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str:
        ids = as_id_list(ids)
        bad = [i for i in ids if not 0 <= i < 256]
        if bad:
            raise ValueError(f"ByteLevelTokenizer ids are bytes 0..255, got {bad[:5]}")
        return bytes(ids).decode("utf-8", errors="replace")

    def save(self, path: str | os.PathLike) -> None:
        """Write a small JSON marker so ``load_tokenizer(path)`` can rebuild this tokenizer."""
        atomic_write_text(path, json.dumps({"type": _KIND, "vocab_size": 256}) + "\n")

    def load(self, path: str | os.PathLike) -> ByteLevelTokenizer:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        if data.get("type") != _KIND:
            raise ValueError(f"{path} is not a saved ByteLevelTokenizer (type={data.get('type')!r}); "
                             "use transformer_toolkit.load_tokenizer(path) to pick the right class")
        return self

    def __repr__(self) -> str:
        return "ByteLevelTokenizer(vocab_size=256)"

"""The one protocol every tokenizer follows, and the fixed special-token table.

A tokenizer maps text to a list of int ids and back. Every class in this package has:
``encode(text)``, ``encode_batch(texts)``, ``encode_with_offsets(text)`` (ids and the character
span each covers, from which SFT loss masks are built), ``decode(ids, skip_special_tokens=False)``,
``vocab_size``, ``bos_id`` / ``eos_id`` / ``pad_id`` (None where the tokenizer has none),
``save(path)`` and ``load(path)`` (which returns the tokenizer, so
``RustBPETokenizer().load("tokenizer.json")`` is one expression).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

# The 21 special tokens of the seed README, at ids 0..20 in this order, whatever the vocab size.
SPECIAL_TOKENS: tuple[str, ...] = (
    "[UNK]", "[PAD]", "[BOS]", "[EOS]", "[SEP]", "[MASK]", "[CLS]",
    "<|im_start|>", "<|im_end|>",                                   # ChatML
    "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",       # Llama 3
    "<start_of_turn>", "<end_of_turn>",                             # Gemma
    "<|tool_call|>", "<|tool_result|>",
    "<|doc_start|>", "<|doc_end|>",
    "<|code_start|>", "<|code_end|>",
    "<|system|>",
)
UNK_ID, PAD_ID, BOS_ID, EOS_ID = 0, 1, 2, 3


@runtime_checkable
class Tokenizer(Protocol):
    """What the data pipeline, the trainer and generation need from a tokenizer."""

    @property
    def vocab_size(self) -> int: ...
    @property
    def bos_id(self) -> int | None: ...
    @property
    def eos_id(self) -> int | None: ...
    @property
    def pad_id(self) -> int | None: ...

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def encode_with_offsets(self, text: str) -> tuple[list[int], list[tuple[int, int]]]: ...
    def decode(self, ids: Iterable[int], skip_special_tokens: bool = False) -> str: ...
    def save(self, path: str | os.PathLike) -> None: ...
    def load(self, path: str | os.PathLike) -> Tokenizer: ...


def as_id_list(ids: Iterable[int]) -> list[int]:
    """Accept a list, a 1-D tensor or a numpy array of ids."""
    if hasattr(ids, "tolist"):
        ids = ids.tolist()
    return [int(i) for i in ids]

"""Tokenizers with one protocol: byte-level, byte-level BPE on HF `tokenizers`, and HF pretrained.

See ``base.Tokenizer`` for the protocol and ``load_tokenizer`` to rebuild any saved one.
"""

from .base import SPECIAL_TOKENS, Tokenizer
from .bpe import RustBPETokenizer
from .byte_level import ByteLevelTokenizer
from .hf import HFTokenizer
from .loading import load_tokenizer

__all__ = ["SPECIAL_TOKENS", "ByteLevelTokenizer", "HFTokenizer", "RustBPETokenizer", "Tokenizer", "load_tokenizer"]

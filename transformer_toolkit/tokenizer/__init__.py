"""Tokenizers with one protocol: byte-level, byte-level BPE on HF `tokenizers`, and HF pretrained;
and the chat templates that turn a conversation into the text they encode.

See ``base.Tokenizer`` for the protocol, ``load_tokenizer`` to rebuild any saved one and
``templates.ChatTemplate`` for the chat formats.
"""

from .base import SPECIAL_TOKENS, Tokenizer
from .bpe import RustBPETokenizer
from .byte_level import ByteLevelTokenizer
from .hf import HFTokenizer
from .loading import load_tokenizer
from .templates import PRESETS, ChatTemplate

__all__ = ["PRESETS", "SPECIAL_TOKENS", "ByteLevelTokenizer", "ChatTemplate", "HFTokenizer", "RustBPETokenizer",
           "Tokenizer", "load_tokenizer"]

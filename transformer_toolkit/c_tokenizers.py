"""The seed README imports tokenizers from here; they live in ``transformer_toolkit.tokenizer``."""

from .tokenizer import ByteLevelTokenizer, HFTokenizer, RustBPETokenizer, load_tokenizer

__all__ = ["ByteLevelTokenizer", "HFTokenizer", "RustBPETokenizer", "load_tokenizer"]

"""The seed README's import path: ``from transformer_toolkit.dataloader import DataConfig, from_binary, ...``.

A re-export only; the code lives in :mod:`transformer_toolkit.data`.
"""

from .data import (
    DataConfig,
    TokenLoader,
    TokenWriter,
    from_binary,
    from_files,
    from_hf,
    from_npy_split,
    open_tokens,
    save_binary,
    tokenize_files,
)

__all__ = [
    "DataConfig", "TokenLoader", "TokenWriter", "from_binary", "from_files", "from_hf", "from_npy_split",
    "open_tokens", "save_binary", "tokenize_files",
]

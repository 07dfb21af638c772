"""Pretraining data: token files on disk, windows and resumable loaders, text and HF sources."""

from .config import DataConfig
from .corpus import tokenize_files
from .hf import from_hf
from .loader import EpochBatchSampler, TokenLoader, TokenWindows
from .sources import from_binary, from_files, from_npy_split
from .stream import StreamLoader
from .tokens import TokenWriter, open_tokens, save_binary, token_spec

__all__ = [
    "DataConfig", "EpochBatchSampler", "StreamLoader", "TokenLoader", "TokenWindows", "TokenWriter", "from_binary",
    "from_files", "from_hf", "from_npy_split", "open_tokens", "save_binary", "token_spec", "tokenize_files",
]

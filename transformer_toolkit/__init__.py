"""transformer-toolkit: train your own LLM in readable PyTorch.

The names the seed README imports from the top level live here.
"""

from .data import DataConfig, from_binary, from_files, from_hf, from_npy_split, save_binary, tokenize_files
from .inference import generate, sample_next, stream
from .model import Transformer, TransformerConfig
from .sft import ChatSession, SFTDataConfig, SFTTrainer, from_sft_files, from_sft_hf, from_sft_json, from_sft_strings
from .tokenizer import ByteLevelTokenizer, ChatTemplate, HFTokenizer, RustBPETokenizer, load_tokenizer
from .trainer import TrainConfig, Trainer, load_ckpt

__version__ = "0.1.0"

__all__ = [
    "ByteLevelTokenizer", "ChatSession", "ChatTemplate", "DataConfig", "HFTokenizer", "RustBPETokenizer",
    "SFTDataConfig", "SFTTrainer", "TrainConfig", "Trainer", "Transformer", "TransformerConfig",
    "__version__", "from_binary", "from_files", "from_hf", "from_npy_split", "from_sft_files", "from_sft_hf",
    "from_sft_json", "from_sft_strings", "generate", "load_ckpt", "load_tokenizer", "sample_next",
    "save_binary", "stream", "tokenize_files",
]

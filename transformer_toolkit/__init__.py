"""transformer-toolkit: train your own LLM in readable PyTorch.

The names the seed README imports from the top level live here.
"""

from .generation import generate, sample_next, stream
from .model import Transformer, TransformerConfig
from .tokenizer import ByteLevelTokenizer, HFTokenizer, RustBPETokenizer, load_tokenizer

__version__ = "0.1.0"

__all__ = [
    "ByteLevelTokenizer", "HFTokenizer", "RustBPETokenizer", "Transformer", "TransformerConfig", "__version__",
    "generate", "load_tokenizer", "sample_next", "stream",
]

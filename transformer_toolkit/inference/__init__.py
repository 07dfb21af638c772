"""Inference: sampling, decode steps, the engine, and the loops built on it.

- ``sampling``: ``SamplingParams`` (temperature, top-k, top-p as one value), ``sample_next``;
- ``steps``: the decode step, eager, compiled (``torch.compile``) or captured (CUDA graph);
- ``engine``: ``Engine``, a model with a KV cache of slots, decoding independent sequences
  at their own positions (continuous batching) with prefix reuse;
- ``decoding``: ``generate`` / ``stream``, a batch decoded in lockstep; ``PromptCache`` keeps a
  call's engine for the next call;
- ``text``: ``complete`` (text in, text out) and ``TextStream`` (UTF-8-safe pieces, stop strings);
- ``batcher``: ``Batcher``, a background thread that admits requests into the engine's free
  slots between steps and decodes all of them together (what ``ttk serve`` runs on).

``transformer_toolkit.generation`` re-exports the names it always had.
"""

from .decoding import generate, stream
from .engine import Engine
from .prompt_cache import PromptCache
from .sampling import SamplingParams, sample_next
from .steps import CompiledStep, EagerStep, GraphStep, compiled_cache_len
from .text import TextStream, check_text, complete, heal_trailing_space

__all__ = ["Engine", "generate", "stream", "PromptCache", "SamplingParams", "sample_next",
           "CompiledStep", "EagerStep", "GraphStep", "compiled_cache_len", "TextStream", "complete",
           "check_text", "heal_trailing_space"]

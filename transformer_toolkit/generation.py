"""Generation's names where the seed README and earlier code import them from.

Everything lives in ``transformer_toolkit.inference`` now (sampling, decode steps, the engine,
``generate``/``stream``, ``PromptCache``, ``complete``). The module-level switches
(``CUDA_GRAPHS``, ``RECOMPILE_LIMIT``, ``PROMPT_CACHE_ROOM``) and ``decode_kernels`` (as the compiled
step calls it) are read and set through to their home module, so ``generation.CUDA_GRAPHS = True`` keeps working.

>>> out = model.generate(prompt, max_new=50, temperature=0.8, top_k=40, top_p=0.95)  # doctest: +SKIP
"""

from __future__ import annotations

import sys
from types import ModuleType

from .inference import decoding as _decoding
from .inference import steps as _steps
from .inference.decoding import generate, stream
from .inference.engine import Engine
from .inference.prompt_cache import PromptCache
from .inference.sampling import SamplingParams, sample_next
from .inference.steps import _CAN_SKIP_GUARDS, CompiledStep, GraphStep, compiled_cache_len
from .inference.text import TextStream, complete, heal_trailing_space
from .model.fast_decode import weights_stamp

__all__ = ["generate", "stream", "complete", "heal_trailing_space", "sample_next", "SamplingParams", "PromptCache",
           "CompiledStep", "GraphStep", "compiled_cache_len", "Engine", "TextStream",
           "weights_stamp", "_CAN_SKIP_GUARDS"]

# name -> the module that owns it (and reads it when it runs)
_FORWARDED = {"CUDA_GRAPHS": _steps, "RECOMPILE_LIMIT": _steps, "decode_kernels": _steps,
              "PROMPT_CACHE_ROOM": _decoding}


class _Generation(ModuleType):
    def __getattr__(self, name):
        if name in _FORWARDED:
            return getattr(_FORWARDED[name], name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name in _FORWARDED:
            setattr(_FORWARDED[name], name, value)
        else:
            super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Generation

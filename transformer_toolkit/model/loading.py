"""``empty_transformer``: a model to load weights into, without initialising them first.

Every loader builds its model this way (checkpoints in store/checkpoint.py, transformers,
native and GGUF files in convert/); loading itself belongs to the I/O layer (store/).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.overrides import TorchFunctionMode


class _NoParameterInit(TorchFunctionMode):
    """Inside: filling a parameter in place (what ``nn.init`` and the modules' own
    initialisers do) is skipped. Buffers are still computed. The mode is this thread's only."""

    # nn.init's random fills hand themselves to the mode whole (tensor as a keyword); the rest
    # reach it as the tensor methods they call
    FILLS = {torch.Tensor.normal_, torch.Tensor.uniform_, torch.Tensor.fill_, torch.Tensor.zero_,
             nn.init.normal_, nn.init.uniform_, nn.init.trunc_normal_, nn.init.kaiming_uniform_,
             nn.init.kaiming_normal_}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        target = args[0] if args else kwargs.get("tensor")
        if func in self.FILLS and isinstance(target, nn.Parameter):
            return target
        return func(*args, **kwargs)


def empty_transformer(cfg):
    """A ``Transformer`` of ``cfg`` whose parameters are left as allocated, not initialised: only
    for a strict ``load_state_dict`` of every weight straight after, which the checkpoint, native,
    transformers and GGUF loaders do. The random init it skips took most of loading a
    pretrained model: 1.1 of 1.8 s for SmolLM2-135M from its GGUF file, 1.1 of 1.1 s from a
    safetensors folder (``bench/bench_load.py``)."""
    from .transformer import Transformer

    with _NoParameterInit():
        return Transformer(cfg)


__all__ = ["empty_transformer"]

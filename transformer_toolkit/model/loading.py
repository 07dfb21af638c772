"""``empty_transformer``: a model to load weights into, without initialising them first; and
``check_weights``: a config read from a file checked against the file's tensors first.

Every loader builds its model this way (checkpoints in store/checkpoint.py, transformers,
native and GGUF files in convert/); loading itself belongs to the I/O layer (store/).
"""

from __future__ import annotations

import re

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


# Positions a loaded config may claim: llama.cpp and most kernels index positions with int32,
# so a larger context_length / max_position_embeddings is damage, not a model.
MAX_CONTEXT = 2**31 - 1
_LAYER = re.compile(r"^blocks\.(\d+)\.")


def check_weights(cfg, weights: dict, source: str, what: str = "config", optional: tuple[str, ...] = ()) -> None:
    """ValueError unless ``weights`` (our parameter names -> tensors, or anything with
    ``.shape`` and ``.dtype``) are exactly the floating-point weights of a ``Transformer`` of
    ``cfg``: the same number of layers, names and shapes. Run before the model is built, so a
    damaged header (100,000 layers, an FFN 10^9 wide) is refused without allocating it: the
    expected shapes come from a model built on the meta device. ``optional``: names that may be
    missing (a tied head). ``what`` names the metadata in the messages."""
    check_context(cfg, source, what)
    check_layers(cfg, {int(m.group(1)) for k in weights if (m := _LAYER.match(k))}, source, what)
    ints = [f"{k} ({str(t.dtype).removeprefix('torch.')})" for k, t in weights.items()
            if isinstance(t.dtype, torch.dtype) and not t.dtype.is_floating_point]
    if ints:
        raise ValueError(f"{source}: weights that are not floating point: {', '.join(ints[:3])}; they would load "
                         "silently cast to float. The file is damaged, or quantised in a format this library "
                         "does not read")
    expected = expected_shapes(cfg)
    extra = sorted(set(weights) - set(expected))
    missing = sorted(set(expected) - set(weights) - set(optional))
    if extra or missing:
        parts = ([f"not in the {what}: {', '.join(extra[:5])}"] if extra else []) + \
                ([f"missing from the weights: {', '.join(missing[:5])}"] if missing else [])
        raise ValueError(f"{source}: weights do not match its {what} ({'; '.join(parts)})")
    bad = [f"{k} {tuple(weights[k].shape)} (expected {tuple(shape)})" for k, shape in expected.items()
           if k in weights and tuple(weights[k].shape) != tuple(shape)]
    if bad:
        raise ValueError(f"{source}: tensor shapes do not match its {what}: {'; '.join(bad[:3])}")


def check_context(cfg, source: str, what: str = "config") -> None:
    """ValueError for a context (``max_seq``) no model can have (see ``MAX_CONTEXT``)."""
    if not 0 < cfg.max_seq <= MAX_CONTEXT:
        raise ValueError(f"{source}: its {what} gives a context of {cfg.max_seq:,} positions, more than the "
                         f"{MAX_CONTEXT:,} positions can be indexed; the metadata is damaged")


def check_layers(cfg, layers: set[int], source: str, what: str = "config") -> None:
    """ValueError unless ``layers`` (the layer numbers the weights hold) are ``0..n_layers-1``;
    checked before anything is built from ``n_layers``."""
    if layers != set(range(cfg.n_layers)):
        held = f"{len(layers):,}" + (f" (numbered {min(layers)} to {max(layers)})" if layers else "")
        raise ValueError(f"{source}: its {what} gives {cfg.n_layers:,} layers but the weights hold {held}; the file "
                         "is damaged or incomplete")


def check_finite(model, source: str) -> None:
    """ValueError naming the weights that hold NaN or infinite values: such a model (a run
    that diverged, a damaged file) turns every logit into NaN, which greedy decoding reads as
    token 0 and sampling refuses deep inside torch. One read of the weights."""
    bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not _finite(t)]
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise ValueError(f"{source}: weights hold NaN or infinite values ({', '.join(bad[:3])}{more}); the model is "
                         "damaged (a diverged run, or a corrupt file) and would only produce garbage")


def _finite(t: torch.Tensor) -> bool:
    # the extremes are NaN when any value is, +-inf when any value is; ~10x faster than
    # isfinite(t).all(), which writes a mask as large as the tensor first
    if t.numel() == 0:
        return True
    lo, hi = torch.aminmax(t)
    return bool(torch.isfinite(lo) & torch.isfinite(hi))


def expected_shapes(cfg) -> dict[str, torch.Size]:
    """Name -> shape of every entry of a ``Transformer(cfg)`` state dict, without allocating
    one (built on the meta device)."""
    from .transformer import Transformer

    with torch.device("meta"):
        return {k: v.shape for k, v in Transformer(cfg).state_dict().items()}


__all__ = ["MAX_CONTEXT", "check_context", "check_finite", "check_layers", "check_weights", "empty_transformer",
           "expected_shapes"]

"""Our gated FFNs as transformers' ``hidden_act``: Llama, Mistral, Qwen2 and DeepSeek-V2 all run
``down(act(gate(x)) * up(x))`` with ``act = ACT2FN[hidden_act]``, so every gated kind of ours is one
of them with the matching activation (SwiGLU is only the ``silu`` case)."""

from __future__ import annotations

GATED = ("swiglu", "glu", "reglu", "geglu")
# (ffn, gelu) -> hidden_act; gelu_pytorch_tanh is torch's tanh GELU, which geglu computes
_TO = {("swiglu", "tanh"): "silu", ("glu", "tanh"): "sigmoid", ("reglu", "tanh"): "relu",
       ("geglu", "tanh"): "gelu_pytorch_tanh", ("geglu", "exact"): "gelu"}
# hidden_act -> (ffn, gelu); gelu_new is the same tanh formula written out (equal to float rounding)
_FROM = {"silu": ("swiglu", "tanh"), "swish": ("swiglu", "tanh"), "sigmoid": ("glu", "tanh"),
         "relu": ("reglu", "tanh"), "gelu_pytorch_tanh": ("geglu", "tanh"), "gelu_new": ("geglu", "tanh"),
         "gelu": ("geglu", "exact")}


def hidden_act(cfg) -> str:
    """The ``hidden_act`` of ``cfg``'s gated FFN (``cfg.ffn`` in ``GATED``)."""
    return _TO[cfg.ffn, cfg.gelu]


def gated_ffn(act: str) -> tuple[str, str] | None:
    """``(ffn, gelu)`` for a transformers ``hidden_act``, or None when no gated FFN of ours computes it."""
    return _FROM.get(act)

"""Tensors between our state dict and GGUF: llama.cpp names, the RoPE row permutation, and
encoding (F32 / F16 / Q8_0) or decoding (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q4_K, Q6_K) of values.

RoPE layout: our attention (like HF Llama) pairs dimension ``j`` of a head with ``j + d/2``
(``rotate_half``); llama.cpp's ``llama`` architecture pairs ``2j`` with ``2j + 1``. Its
converter therefore reorders the rows of ``q``/``k`` (weights and biases) within each head so
that the interleaved rotation computes what the half-split one did; ``to_gguf_layout`` does the
same and ``from_gguf_layout`` undoes it. ``qwen2`` runs RoPE in the half-split ("NeoX") layout
already and needs no permutation.

Shapes: GGUF lists dimensions innermost first (``ne0`` = columns); the arrays here are numpy
row-major ``(rows, cols)``, i.e. the GGUF shape reversed, as torch stores ``nn.Linear`` weights.
"""

from __future__ import annotations

import numpy as np
import torch

# our per-layer parameter -> llama.cpp tensor (".weight"/".bias" appended to both)
LAYER_NAMES = {"attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "attn.q_proj": "attn_q", "attn.k_proj": "attn_k",
               "attn.v_proj": "attn_v", "attn.o_proj": "attn_output", "ffn.gate_proj": "ffn_gate",
               "ffn.up_proj": "ffn_up", "ffn.down_proj": "ffn_down"}
GLOBAL_NAMES = {"embed.weight": "token_embd.weight", "norm.weight": "output_norm.weight",
                "head.weight": "output.weight"}

# Tensor types load_gguf reads (through gguf.quants.dequantize); checked before any work.
READABLE = ("F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q4_K", "Q6_K")
# save_gguf dtype -> the type of 2-D weights (1-D norms and biases always stay F32, as in llama.cpp)
WRITABLE = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0"}
FILE_TYPES = {"f32": 0, "f16": 1, "q8_0": 7}  # llama.cpp's LLAMA_FTYPE_ALL_F32 / MOSTLY_F16 / MOSTLY_Q8_0


def gguf_name(ours: str) -> str:
    """Our state-dict key -> its llama.cpp tensor name (``blocks.3.attn.q_proj.weight`` ->
    ``blk.3.attn_q.weight``)."""
    if ours in GLOBAL_NAMES:
        return GLOBAL_NAMES[ours]
    _, i, rest = ours.split(".", 2)
    param, suffix = rest.rsplit(".", 1)
    return f"blk.{i}.{LAYER_NAMES[param]}.{suffix}"


def _rope_groups(key: str, n_heads: int, n_kv_heads: int) -> int | None:
    """How many heads the rows of ``key`` hold when it is a RoPE'd projection, else None."""
    if ".attn.q_proj." in key:
        return n_heads
    if ".attn.k_proj." in key:
        return n_kv_heads
    return None


def to_gguf_layout(key: str, t: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """Reorder each head's rows from half-split to interleaved pairs: row ``j`` and ``j + d/2``
    become rows ``2j`` and ``2j + 1``."""
    heads = _rope_groups(key, n_heads, n_kv_heads)
    if heads is None:
        return t
    rest = t.shape[1:]
    return t.reshape(heads, 2, t.shape[0] // heads // 2, *rest).transpose(1, 2).reshape(t.shape)


def from_gguf_layout(key: str, t: torch.Tensor, n_heads: int, n_kv_heads: int) -> torch.Tensor:
    """The inverse of ``to_gguf_layout``."""
    heads = _rope_groups(key, n_heads, n_kv_heads)
    if heads is None:
        return t
    rest = t.shape[1:]
    return t.reshape(heads, t.shape[0] // heads // 2, 2, *rest).transpose(1, 2).reshape(t.shape)


def encode(t: torch.Tensor, dtype: str):
    """``(array, raw_type)`` for ``GGUFWriter.add_tensor(name, array, raw_dtype=raw_type)``.

    2-D weights take ``dtype``; Q8_0 needs rows that are a multiple of its 32-value block, and a
    weight whose rows are not falls back to F16 (as llama.cpp's converter does)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType
    from gguf.quants import quantize

    a = t.detach().float().cpu().contiguous().numpy()
    kind = WRITABLE[dtype] if a.ndim == 2 else "F32"
    if kind == "Q8_0" and a.shape[-1] % GGML_QUANT_SIZES[GGMLQuantizationType.Q8_0][0]:
        kind = "F16"
    if kind == "F32":
        return a, None
    if kind == "F16":
        return a.astype(np.float16), None
    qtype = GGMLQuantizationType[kind]
    return quantize(a, qtype), qtype


def check_types(tensors) -> None:
    """ValueError naming every tensor whose type ``decode`` cannot read (before any is decoded)."""
    bad = [f"{t.name} ({t.tensor_type.name})" for t in tensors if t.tensor_type.name not in READABLE]
    if bad:
        more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
        raise ValueError(f"tensor types this importer does not read: {', '.join(bad[:5])}{more} (supported: "
                         f"{', '.join(READABLE)}); re-quantise the file to one of them with llama.cpp's llama-quantize")


def decode(tensor) -> torch.Tensor:
    """A ``GGUFReader`` tensor as float32 ``(rows, cols)`` (or ``(n,)``), dequantised."""
    from gguf.quants import dequantize

    check_types([tensor])
    shape = tuple(int(n) for n in reversed(tensor.shape))
    values = dequantize(np.asarray(tensor.data), tensor.tensor_type).reshape(shape)
    return torch.from_numpy(np.array(values, dtype=np.float32))  # a copy: the reader's arrays are read-only maps

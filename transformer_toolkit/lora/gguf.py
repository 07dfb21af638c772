"""A model's adapters as a llama.cpp LoRA GGUF file, applied to the model's own ``save_gguf`` export
(``llama-cli -m model.gguf --lora adapter.gguf``, ``llama_cpp.Llama(model_path=..., lora_path=...)``).

The file is what llama.cpp's ``convert_lora_to_gguf.py`` writes: the base model's architecture,
``general.type = "adapter"``, ``adapter.type = "lora"``, ``adapter.lora.alpha``, and per adapted
weight two tensors named after it, ``<base>.lora_a`` (A, ``(r, in)``) and ``<base>.lora_b`` (B,
``(out, r)``); llama.cpp scales by ``alpha / r`` (r read from the tensors). Our GGUF export
reorders the rows of q/k weights for llama.cpp's interleaved RoPE (convert/gguf_tensors.py): a
row permutation ``P W`` is ``P B`` of the adapter, so B of q/k is reordered the same way and A
is not.
"""

from __future__ import annotations

import os

import numpy as np
import torch.nn as nn

from .apply import adapters
from .layers import ADAPTERS, LoRALinear

DTYPES = ("f32", "f16")


def gguf_adapter_tensors(model: nn.Module) -> dict[str, np.ndarray]:
    """``{llama.cpp name: array}`` of every adapter, or ValueError naming those without a GGUF layout."""
    from ..convert.gguf import gguf_arch
    from ..convert.gguf_tensors import gguf_name, to_gguf_layout

    cfg = model.cfg
    arch = gguf_arch(cfg)  # raises for a model llama.cpp cannot run from our export
    if arch not in ("llama", "qwen2"):
        raise ValueError(f"LoRA GGUF export covers the llama and qwen2 layouts, not {arch!r} (its fused q/k/v have no "
                         "per-projection adapter tensors here); export merge_and_unload(model) with save_gguf instead")
    out, bad = {}, []
    for path, module in model.named_modules():
        if not isinstance(module, ADAPTERS):
            continue
        if not isinstance(module, LoRALinear):
            bad.append(path)
            continue
        key = f"{path}.weight"
        try:
            name = gguf_name(key)
        except KeyError:
            bad.append(path)
            continue
        b = module.lora_B.detach().float().cpu()
        if arch == "llama":
            b = to_gguf_layout(key, b, cfg.n_heads, cfg.n_kv_heads)
        out[f"{name}.lora_a"] = module.lora_A.detach().float().cpu().contiguous().numpy()
        out[f"{name}.lora_b"] = b.contiguous().numpy()
    if bad:
        raise ValueError(f"adapters on {', '.join(bad[:4])} have no llama.cpp tensor; export merge_and_unload(model) "
                         "with save_gguf instead")
    return out


def save_gguf_adapter(model: nn.Module, path: str | os.PathLike, dtype: str = "f32") -> str:
    """Write the adapters as a llama.cpp LoRA GGUF (``dtype`` "f32" or "f16"); returns the path."""
    from ..convert.gguf import _gguf, gguf_arch, gguf_writer

    info = getattr(model, "adapter_info", None)
    if not adapters(model) or info is None:
        raise ValueError("this model has no LoRA adapters; add them with apply_lora(model, LoRAConfig(...))")
    if any(m.merged for m in adapters(model)):
        raise ValueError("the adapters are merged into the weights; unmerge(model) first (llama.cpp applies them)")
    if dtype not in DTYPES:
        raise ValueError(f"dtype={dtype!r}: a LoRA GGUF holds {' or '.join(DTYPES)} tensors")
    tensors = gguf_adapter_tensors(model)
    gguf = _gguf()
    with gguf_writer(path, gguf_arch(model.cfg)) as w:
        w.add_type(gguf.GGUFType.ADAPTER)
        w.add_name("transformer-toolkit LoRA adapter")
        w.add_string(gguf.Keys.Adapter.TYPE, "lora")
        w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(info["config"]["alpha"]))
        for name, array in tensors.items():
            w.add_tensor(name, array.astype(np.float16) if dtype == "f16" else array)
    return os.fspath(path)

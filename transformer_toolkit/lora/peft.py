"""A model's adapters as a PEFT folder: ``adapter_config.json`` + ``adapter_model.safetensors``,
which ``peft.PeftModel.from_pretrained`` loads on top of the model's ``save_pretrained`` export.

PEFT names an adapter by the transformers module it sits on
(``base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight``), so the mapping follows
convert/hf_weights.py: a plain rename for the Llama family (Llama, Mistral, Qwen2, Mixtral's
attention), and for DeepSeek-V2 (MLA) also the rope rows of ``q_proj``/``q_b_proj``/``kv_a_proj``,
which transformers keeps interleaved: a row permutation ``P W`` of a weight is ``P B`` of its
adapter (``A`` is unchanged). Stacked-expert adapters, GPT-2's fused ``c_attn`` and DeepSeek-V2's
MLPs (peft 0.21 reads every deepseek_v2 ``gate/up/down_proj`` target as a fused expert weight)
have no PEFT layout here: such a model is refused with the way out (merge the adapters and
export the model).
"""

from __future__ import annotations

import json
import os
import re

import torch.nn as nn
from torch import Tensor

from ..atomic import atomic_write_text
from .apply import adapters
from .layers import ADAPTERS, LoRALinear

_LAYER = re.compile(r"^blocks\.(\d+)\.(attn|ffn)\.(.+)$")


def _deepseek_rows(name: str, b: Tensor, cfg) -> Tensor:
    from ..convert.hf_deepseek import _interleave, _rope_rows

    return _rope_rows(name, b, cfg, _interleave(cfg.rope_head_dim))


def hf_module(path: str, family: str) -> str | None:
    """The transformers module path of our projection ``path`` (None: no PEFT counterpart)."""
    if path == "head":
        return "lm_head"
    m = _LAYER.match(path)
    if m is None or family == "gpt2":
        return None
    i, part, rest = m.groups()
    layer = f"model.layers.{i}."
    if part == "attn":
        if family == "deepseek_v2":
            from ..convert.hf_deepseek import _ATTN

            return layer + "self_attn." + _ATTN[rest] if rest in _ATTN else None
        return layer + "self_attn." + rest
    if family == "deepseek_v2":
        return None  # peft 0.21 remaps every deepseek_v2 *.gate_proj/up_proj/down_proj target to fused experts
    return layer + "mlp." + rest if "." not in rest else None  # routed experts / routers: none


def peft_weights(model: nn.Module) -> tuple[dict[str, Tensor], list[str], str]:
    """``(PEFT state dict, target module paths, family)``, or ValueError naming the adapters
    that have no PEFT counterpart."""
    from ..convert.hf_config import to_hf_config

    cfg = model.cfg
    family, _ = to_hf_config(cfg)  # raises when the model itself has no transformers export
    out, targets, bad = {}, [], []
    for path, module in model.named_modules():
        if not isinstance(module, ADAPTERS):
            continue
        theirs = hf_module(path, family) if isinstance(module, LoRALinear) else None
        if theirs is None:
            bad.append(path)
            continue
        b = module.lora_B.detach()
        if family == "deepseek_v2" and path.startswith("blocks."):
            b = _deepseek_rows(path.rsplit(".", 1)[-1], b, cfg)
        key = f"base_model.model.{theirs}"
        out[f"{key}.lora_A.weight"] = module.lora_A.detach().cpu().contiguous().clone()
        out[f"{key}.lora_B.weight"] = b.cpu().contiguous().clone()
        targets.append(theirs)
    if bad:
        raise ValueError(f"adapters on {', '.join(bad[:4])} have no PEFT layout in a {family} export (stacked "
                         "experts, routers, GPT-2's fused attention and DeepSeek-V2's MLPs do not map); export "
                         "merge_and_unload(model) instead, or train with other lora.targets (e.g. attn)")
    return out, targets, family


def save_peft(model: nn.Module, folder: str | os.PathLike, base_model_name_or_path: str | None = None) -> str:
    """Write the adapters as a PEFT LoRA folder for ``PeftModel.from_pretrained(hf_model, folder)``,
    where ``hf_model`` is this model's base exported with ``save_pretrained``. Returns the folder."""
    from safetensors.torch import save_file

    info = getattr(model, "adapter_info", None)
    if not adapters(model) or info is None:
        raise ValueError("this model has no LoRA adapters; add them with apply_lora(model, LoRAConfig(...))")
    if any(m.merged for m in adapters(model)):
        raise ValueError("the adapters are merged into the weights; unmerge(model) first (PEFT applies them itself)")
    weights, targets, _ = peft_weights(model)
    lora = info["config"]
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": lora["r"], "lora_alpha": lora["alpha"],
        "lora_dropout": lora["dropout"], "target_modules": sorted(targets), "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "inference_mode": True, "init_lora_weights": True,
        "modules_to_save": None, "base_model_name_or_path": base_model_name_or_path or info.get("base"),
    }
    os.makedirs(folder, exist_ok=True)
    tmp = os.path.join(folder, "adapter_model.safetensors.tmp")
    save_file(weights, tmp, metadata={"format": "pt"})
    os.replace(tmp, os.path.join(folder, "adapter_model.safetensors"))
    atomic_write_text(os.path.join(folder, "adapter_config.json"), json.dumps(config, indent=2) + "\n")
    return os.fspath(folder)

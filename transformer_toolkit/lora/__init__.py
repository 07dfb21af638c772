"""LoRA: low-rank adapters on our models' projections (dense, MLA and stacked MoE experts),
merging and unmerging them, and export to PEFT folders and llama.cpp LoRA GGUF files. A LoRA
run's checkpoints load through ``store.load`` (adapters merged, or kept with ``merged=False``).

>>> from transformer_toolkit.lora import LoRAConfig, apply_lora      # doctest: +SKIP
>>> apply_lora(model, LoRAConfig(r=8, alpha=16, targets=["attn"]))  # doctest: +SKIP
"""

from .apply import (
    adapter_state_dict,
    adapters,
    apply_lora,
    disabled,
    find_targets,
    load_adapter_state,
    merge,
    merge_and_unload,
    unload,
    unmerge,
)
from .config import PRESETS, LoRAConfig
from .gguf import save_gguf_adapter
from .io import load_adapter, save_adapter
from .layers import LoRAExperts, LoRALinear
from .peft import save_peft

__all__ = ["PRESETS", "LoRAConfig", "LoRAExperts", "LoRALinear", "adapter_state_dict", "adapters", "apply_lora",
           "disabled", "find_targets", "load_adapter", "load_adapter_state", "merge",
           "merge_and_unload", "save_adapter", "save_gguf_adapter", "save_peft", "unload", "unmerge"]

"""Our adapters in PEFT: ``save_peft`` + ``save_pretrained`` load in transformers + peft with the
logits of our adapted model, for the Llama family (with q/k/v biases and an untied head too),
Mixtral's attention and DeepSeek-V2's MLA (rope rows permuted in B); adapters with no PEFT
layout are refused."""

from __future__ import annotations

import json

import pytest
import torch
from model_helpers import randomize_lora_b, tiny_config

from transformer_toolkit.lora import apply_lora
from transformer_toolkit.lora.peft import save_peft
from transformer_toolkit.model import Transformer

peft = pytest.importorskip("peft")
transformers = pytest.importorskip("transformers")

CASES = {
    "llama": (dict(attn="gqa", ffn="swiglu"), ["all-linear"]),
    "qwen2": (dict(attn="gqa", ffn="swiglu", qkv_bias=True, tie_weights=False), ["all-linear", "head"]),
    "mixtral": (dict(attn="mha", ffn="moe"), ["attn"]),
    "deepseek_v2": (dict(attn="mla", ffn="swiglu", q_latent_dim=24, eps=1e-6), ["attn"]),
    "deepseek_moe": (dict(attn="mla", ffn="moe_shared", eps=1e-6, moe_norm_topk=False), ["attn"]),
}


@pytest.mark.parametrize("case", list(CASES))
def test_peft_loads_our_adapter_on_our_export(tmp_path, case):
    kw, targets = CASES[case]
    torch.manual_seed(0)
    model = Transformer(tiny_config(**kw)).eval()
    model.save_pretrained(tmp_path / "base")
    apply_lora(model, r=4, alpha=12, targets=targets)
    randomize_lora_b(model, std=0.05)
    save_peft(model, tmp_path / "adapter")
    cfg = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert cfg["peft_type"] == "LORA" and cfg["r"] == 4 and cfg["lora_alpha"] == 12

    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "base", dtype=torch.float32)
    hf = peft.PeftModel.from_pretrained(hf, tmp_path / "adapter").eval()
    n_ours = sum(1 for n, _ in model.named_parameters() if n.endswith("lora_A"))
    assert sum(1 for n, _ in hf.named_parameters() if "lora_A" in n) == n_ours
    x = torch.randint(0, 97, (2, 11))
    with torch.no_grad():
        ours = model(x)[0]
        theirs = hf(x).logits
        assert (ours - Transformer.from_pretrained(tmp_path / "base")(x)[0]).abs().max() > 1e-3
    torch.testing.assert_close(theirs, ours, rtol=0, atol=1e-5)


def test_adapters_without_a_peft_layout_are_refused(tmp_path):
    model = Transformer(tiny_config(attn="gqa", ffn="moe"))
    apply_lora(model, r=2, targets=["experts.*"])
    with pytest.raises(ValueError, match="no PEFT layout.*merge_and_unload"):
        save_peft(model, tmp_path / "a")
    deepseek = Transformer(tiny_config(attn="mla", ffn="swiglu", eps=1e-6))
    apply_lora(deepseek, r=2, targets=["ffn"])
    with pytest.raises(ValueError, match="DeepSeek-V2's MLPs"):
        save_peft(deepseek, tmp_path / "c")
    mla = Transformer(tiny_config(attn="mla", ffn="ffn"))
    apply_lora(mla, r=2)
    with pytest.raises(ValueError, match="no exact transformers counterpart"):
        save_peft(mla, tmp_path / "b")
    assert not any((tmp_path / d).exists() for d in "abc")

"""LoRA adapters in every attention x feed-forward variant: a fresh adapter is the base model,
only adapters train, merge / unmerge / disable are exact, cached decoding still equals the full
forward (MLA's absorbed decode reads the adapted weight), and targets select what they name."""

from __future__ import annotations

import itertools
import warnings

import pytest
import torch
from model_helpers import ATTNS, FFNS, randomize_lora_b, tiny_config

from transformer_toolkit.lora import (
    LoRAConfig,
    LoRAExperts,
    LoRALinear,
    adapter_state_dict,
    adapters,
    apply_lora,
    disabled,
    find_targets,
    load_adapter,
    load_adapter_state,
    merge,
    merge_and_unload,
    save_adapter,
    unload,
    unmerge,
)
from transformer_toolkit.model import Transformer

VARIANTS = list(itertools.product(ATTNS, FFNS))


def _model(attn: str, ffn: str, **kw) -> Transformer:
    extra = {"q_latent_dim": 24} if attn == "mla" else {}
    return Transformer(tiny_config(attn=attn, ffn=ffn, **extra, **kw)).eval()


@pytest.mark.parametrize("attn,ffn", VARIANTS)
def test_adapter_is_exact_in_every_variant(attn, ffn):
    model = _model(attn, ffn)
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        base = model(x)[0]
        base_sd = {k: v.clone() for k, v in model.state_dict().items()}
    apply_lora(model, LoRAConfig(r=4, alpha=8))
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0], base, rtol=0, atol=1e-5)  # B = 0: the base model
    randomize_lora_b(model)
    with torch.no_grad():
        adapted = model(x)[0]
        assert (adapted - base).abs().max() > 1e-2, "the adapter changes nothing"
        with disabled(model):
            torch.testing.assert_close(model(x)[0], base, rtol=0, atol=1e-5)
        merge(model)
        assert all(m.merged for m in adapters(model))
        torch.testing.assert_close(model(x)[0], adapted, rtol=0, atol=1e-5)
        unmerge(model)
        torch.testing.assert_close(model(x)[0], adapted, rtol=0, atol=1e-5)
    for k, v in base_sd.items():  # unmerge gives the base weights back
        torch.testing.assert_close(model.state_dict()[k], v, rtol=0, atol=1e-6)
    plain = merge_and_unload(model)
    assert not adapters(plain) and set(plain.state_dict()) == set(base_sd)
    with torch.no_grad():
        torch.testing.assert_close(plain(x)[0], adapted, rtol=0, atol=1e-5)


@pytest.mark.parametrize("attn,ffn", [(a, "swiglu") for a in ATTNS] + [("mla", "moe"), ("gqa", "moe_shared")])
def test_cached_decode_with_adapters_equals_full_forward(attn, ffn):
    """Greedy cached decoding (MLA decodes over the latent with the adapted kv_b_proj; MoE decode
    steps route a few rows) picks the argmax of the full forward at every step. (moe_ec is not
    causal, see model/moe.py.)"""
    model = _model(attn, ffn)
    apply_lora(model, r=4)
    randomize_lora_b(model)
    prompt = torch.randint(0, 97, (2, 5))
    with torch.no_grad():
        out = model.generate(prompt, max_new=8, temperature=0)
        full = model(out)[0].argmax(-1)[:, prompt.shape[1] - 1:-1]
    assert torch.equal(out[:, prompt.shape[1]:], full)


@pytest.mark.parametrize("attn", ["gqa", "mla"])
def test_decode_kernels_keep_the_update(attn):
    """In a decode step (``kernels.decode_kernels``, which ``generate`` enters) an unmerged
    adapter's base product runs the decode layout chosen for it, stacked with its siblings'
    (q/k/v, gate/up), and the update is still added: the step's logits are the adapted model's."""
    from transformer_toolkit.model.kernels import decode_kernels

    model = _model(attn, "swiglu")
    apply_lora(model, r=4)
    randomize_lora_b(model)
    x = torch.randint(0, 97, (2, 1))  # one new token per row
    with torch.no_grad():
        want = model(x)[0]
        with disabled(model):
            base = model(x)[0]
        with decode_kernels(model):
            linears = [m for m in adapters(model) if isinstance(m, LoRALinear)]
            assert linears and all(m.kernel is not None for m in linears)
            calls = []
            for m in linears:  # count the kernel calls: the base products do run them
                m.kernel = lambda lin, h, k=m.kernel: calls.append(lin) or k(lin, h)
            got = model(x)[0]
    assert {id(m) for m in calls} == {id(m) for m in linears}
    assert all(m.kernel is None for m in linears)  # restored after the block
    assert (want - base).abs().max() > 1e-2
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_prompt_cache_is_not_reused_across_disabling():
    """A PromptCache filled with the adapters on is not reused with them off (no weight changes,
    but the function does): the second call equals one without a cache."""
    from transformer_toolkit.generation import PromptCache

    model = _model("gqa", "swiglu")
    apply_lora(model, r=4)
    randomize_lora_b(model)
    x = torch.randint(0, 97, (1, 6))
    pc = PromptCache()
    first = model.generate(x, 4, temperature=0, prompt_cache=pc)
    with disabled(model):
        again = model.generate(first, 4, temperature=0, prompt_cache=pc)
        assert pc.reused == 0
        fresh = model.generate(first, 4, temperature=0)
    assert torch.equal(again, fresh)


@pytest.mark.parametrize("attn,ffn", [("gqa", "swiglu"), ("mla", "moe"), ("mha", "moe_ec"), ("mqa", "moe_shared")])
def test_only_adapters_train(attn, ffn):
    model = _model(attn, ffn).train()
    apply_lora(model, r=4)
    randomize_lora_b(model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(n.endswith(("lora_A", "lora_B")) for n in trainable)
    loss = model(torch.randint(0, 97, (2, 10)))[0].logsumexp(-1).mean()
    loss.backward()
    for n, p in model.named_parameters():
        if n in trainable:
            assert p.grad is not None and p.grad.abs().sum() > 0, n
        else:
            assert p.grad is None, n


def test_expert_adapters_are_stacked_per_expert():
    model = _model("gqa", "moe")
    apply_lora(model, r=3, targets=["experts.*"])
    experts = model.blocks[0].ffn.experts
    assert isinstance(experts, LoRAExperts) and set(experts.lora) == {"gate_proj", "up_proj", "down_proj"}
    E, F, D = experts.gate_proj.shape
    assert experts.lora["gate_proj"].lora_A.shape == (E, 3, D)
    assert experts.lora["gate_proj"].lora_B.shape == (E, F, 3)
    assert experts.lora["down_proj"].lora_A.shape == (E, 3, F)
    assert not any(isinstance(m, LoRALinear) for m in model.modules())  # attention and router untouched


def test_one_expert_adapter_changes_only_that_experts_rows():
    """Expert e's adapter acts on the tokens routed to e only: the grouped matmul slices rows per expert."""
    from transformer_toolkit.model.moe import grouped_mm

    model = _model("gqa", "moe")
    apply_lora(model, r=2, targets=["experts.up_proj"])
    experts = model.blocks[0].ffn.experts
    with torch.no_grad():
        experts.lora["up_proj"].lora_B[1].fill_(0.5)  # expert 1 only
    x = torch.randn(10, 48)
    offs = torch.tensor([3, 6, 8, 10], dtype=torch.int32)
    with torch.no_grad():
        base = grouped_mm(x, experts.up_proj.transpose(1, 2), offs)
        out = experts.project("up_proj", x, offs)
    changed = (out - base).abs().amax(-1) > 1e-6
    assert changed.tolist() == [False] * 3 + [True] * 3 + [False] * 4


def test_targets_presets_patterns_and_errors():
    model = _model("mla", "swiglu")
    paths = [p for p, _, _ in find_targets(model, LoRAConfig(targets=["attn"]))]
    assert {p.rsplit(".", 1)[-1] for p in paths} == {"q_a_proj", "q_b_proj", "kv_a_proj", "kv_b_proj", "o_proj"}
    paths = [p for p, _, _ in find_targets(model, LoRAConfig(targets=["blocks.1.*proj"]))]
    assert paths and all(p.startswith("blocks.1.") for p in paths)
    one = find_targets(model, LoRAConfig(targets="blocks.0.ffn.up_proj"))
    assert [p for p, _, _ in one] == ["blocks.0.ffn.up_proj"]
    with pytest.raises(ValueError, match=r"'kv_b_prj' matches no projection.*did you mean 'kv_b_proj'"):
        find_targets(model, LoRAConfig(targets=["kv_b_prj"]))
    with warnings.catch_warnings(record=True) as w:  # another variant's name: ignored with a warning
        warnings.simplefilter("always")
        find_targets(model, LoRAConfig(targets=["q_proj", "o_proj"]))
    assert any("'q_proj' matches no projection" in str(x.message) for x in w)
    with pytest.raises(ValueError, match="select no projection"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        find_targets(model, LoRAConfig(targets=["router"]))
    with pytest.raises(ValueError, match="tied to the embedding"):
        apply_lora(_model("gqa", "swiglu"), targets=["head"])
    untied = _model("gqa", "swiglu", tie_weights=False)
    apply_lora(untied, targets=["head"])
    assert isinstance(untied.head, LoRALinear)
    with pytest.raises(ValueError, match="already has LoRA adapters"):
        apply_lora(untied)
    for bad, msg in (({"r": 0}, "r .* must be >= 1"), ({"alpha": 0}, "alpha must be > 0"),
                     ({"dropout": 1.0}, "dropout must be in"), ({"targets": []}, "non-empty list"),
                     ({"rank": 4}, "unknown field")):
        with pytest.raises(ValueError, match=msg):
            LoRAConfig(**bad)


def test_adapter_state_save_and_load(tmp_path):
    model = _model("gqa", "moe_shared")
    apply_lora(model, r=4, targets=["attn", "ffn"], base="some/base.gguf")
    randomize_lora_b(model)
    sd = adapter_state_dict(model)
    assert sd and all(k.endswith(("lora_A", "lora_B")) for k in sd)
    x = torch.randint(0, 97, (1, 9))
    with torch.no_grad():
        want = model(x)[0]
    save_adapter(model, tmp_path / "ad")
    assert sorted(p.name for p in (tmp_path / "ad").iterdir()) == ["adapter.json", "adapter.safetensors"]
    fresh = unload(model)  # the same base weights, adapters gone
    assert not adapters(fresh)
    load_adapter(fresh, tmp_path / "ad")
    with torch.no_grad():
        torch.testing.assert_close(fresh(x)[0], want, rtol=0, atol=1e-6)
    assert fresh.adapter_info["base"] == "some/base.gguf"
    with pytest.raises(ValueError, match="missing: .*lora_A"):
        load_adapter_state(fresh, {k: v for k, v in sd.items() if "blocks.0.attn.q_proj" not in k})
    other = _model("gqa", "moe_shared")
    apply_lora(other, r=4, targets=["attn"])
    with pytest.raises(ValueError, match="unexpected"):
        load_adapter_state(other, sd)


def test_lora_dropout_only_in_training():
    model = _model("gqa", "swiglu")
    apply_lora(model, r=4, dropout=0.5)
    randomize_lora_b(model)
    x = torch.randint(0, 97, (1, 8))
    with torch.no_grad():
        a, b = model(x)[0], model(x)[0]
        assert torch.equal(a, b)
        model.train()
        c, d = model(x)[0], model(x)[0]
        assert not torch.equal(c, d)


def test_export_refuses_unmerged_adapters(tmp_path):
    model = _model("gqa", "swiglu")
    apply_lora(model, r=2)
    with pytest.raises(ValueError, match="has LoRA adapters.*merge_and_unload"):
        model.save_pretrained(tmp_path / "hf")
    assert not (tmp_path / "hf").exists()

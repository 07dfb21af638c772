"""Tiny models of each family for the HF conversion tests (imported by name, not via conftest)."""

from __future__ import annotations

import torch

from transformer_toolkit.model.config import TransformerConfig
from transformer_toolkit.model.transformer import Transformer

VOCAB, SEQ = 97, 64
BASE = dict(vocab_size=VOCAB, dim=64, n_layers=2, n_heads=4, max_seq=SEQ)

# our config -> the transformers class it must export to
FAMILIES = {
    "llama_mha_tied": (dict(), "LlamaForCausalLM"),
    "llama_gqa_untied": (dict(attn="gqa", n_kv_heads=2, tie_weights=False, rope_theta=5e5, eps=1e-5),
                         "LlamaForCausalLM"),
    "llama_mqa_bias": (dict(attn="mqa", bias=True, head_dim=32), "LlamaForCausalLM"),
    "qwen2": (dict(attn="gqa", n_kv_heads=2, qkv_bias=True), "Qwen2ForCausalLM"),
    "mixtral": (dict(attn="gqa", n_kv_heads=2, ffn="moe", n_experts=4, top_k=2, hidden_dim=96),
                "MixtralForCausalLM"),
    "gpt2": (dict(norm="layernorm", pos_enc="learned", ffn="ffn", bias=True, eps=1e-5), "GPT2LMHeadModel"),
    "gpt2_exact_gelu": (dict(norm="layernorm", pos_enc="learned", ffn="ffn", bias=True, eps=1e-5, gelu="exact"),
                        "GPT2LMHeadModel"),
    # GPT-2 with fillers: zero biases, zero or sinusoidal position tables (dropped again on import)
    "gpt2_no_bias": (dict(norm="layernorm", pos_enc="learned", ffn="ffn", eps=1e-5), "GPT2LMHeadModel"),
    "gpt2_qkv_bias_untied": (dict(norm="layernorm", pos_enc="learned", ffn="ffn", qkv_bias=True, tie_weights=False),
                             "GPT2LMHeadModel"),
    "gpt2_sinusoidal_relu": (dict(norm="layernorm", pos_enc="sinusoidal", ffn="relu_ffn", bias=True),
                             "GPT2LMHeadModel"),
    "gpt2_no_positions": (dict(norm="layernorm", pos_enc="none", ffn="ffn", gelu="exact"),
                          "GPT2LMHeadModel"),
    # gated FFNs other than SwiGLU: the same classes with another hidden_act
    "llama_reglu": (dict(ffn="reglu"), "LlamaForCausalLM"),
    "llama_geglu_exact_bias": (dict(ffn="geglu", gelu="exact", bias=True), "LlamaForCausalLM"),
    "qwen2_glu": (dict(ffn="glu", attn="gqa", n_kv_heads=2, qkv_bias=True), "Qwen2ForCausalLM"),
    "deepseek_mla": (dict(attn="mla", latent_dim=24, q_latent_dim=16, rope_head_dim=6), "DeepseekV2ForCausalLM"),
    "deepseek_moe": (dict(attn="mla", latent_dim=32, ffn="moe_shared", n_experts=5, moe_n_shared=1, top_k=2,
                          moe_norm_topk=False, moe_hidden_dim=24, tie_weights=False), "DeepseekV2ForCausalLM"),
    # DeepSeek-V2 with fillers: zero q_a/kv_a biases (bias=True), a zero shared expert (moe_n_shared=0)
    "deepseek_mla_bias_geglu": (dict(attn="mla", latent_dim=24, q_latent_dim=16, rope_head_dim=6, bias=True,
                                     ffn="geglu"), "DeepseekV2ForCausalLM"),
    "deepseek_moe_no_shared_bias": (dict(attn="mla", latent_dim=32, ffn="moe_shared", n_experts=4, moe_n_shared=0,
                                         top_k=2, moe_norm_topk=False, moe_hidden_dim=24, bias=True),
                                    "DeepseekV2ForCausalLM"),
}


def tiny_model(overrides: dict, seed: int = 0) -> Transformer:
    """A random model whose norms and biases are perturbed too, so a swapped or dropped
    bias/scale changes the logits."""
    torch.manual_seed(seed)
    model = Transformer(TransformerConfig(**BASE, **overrides)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def tokens(seed: int = 1, batch: int = 2, length: int = 24) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, VOCAB, (batch, length), generator=g)

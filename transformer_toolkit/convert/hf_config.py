"""TransformerConfig <-> transformers ``config.json``, exact mappings only.

Each family is a set of required settings of our config; a config that matches none raises a
``ValueError`` naming the fields that block it. Families: ``llama`` (also Mistral/SmolLM on
import), ``qwen2`` (Llama + q/k/v biases), ``mixtral`` (Llama + top-k MoE), ``deepseek_v2``
(MLA, dense or shared-expert MoE; see hf_deepseek.py), ``gpt2`` (see hf_gpt2.py). Where the
transformers class has parameters our config lacks (GPT-2's biases and positions), the export
fills them so that it computes exactly the same thing.
"""

from __future__ import annotations

from ..model.config import TransformerConfig
from . import hf_deepseek as deepseek
from . import hf_gpt2 as gpt2
from .hf_act import GATED, gated_ffn, hidden_act

SUPPORTED = ("LlamaForCausalLM (rmsnorm, rope, swiglu/glu/reglu/geglu, mha/gqa/mqa/flash)",
             "Qwen2ForCausalLM (the same with qkv_bias=True)",
             "MixtralForCausalLM (the same with ffn='moe', moe_norm_topk=True)",
             "DeepseekV2ForCausalLM (attn='mla', rmsnorm, rope, eps=1e-6, a gated FFN or moe_shared with "
             "moe_norm_topk=False)",
             "GPT2LMHeadModel (layernorm, learned/sinusoidal/no positions, ffn or relu_ffn, mha)")


def _blockers(cfg: TransformerConfig, want: dict) -> list[str]:
    return [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in want.items() if getattr(cfg, k) != v]


def _family(cfg: TransformerConfig) -> str:
    """The transformers family that computes exactly what ``cfg`` computes, or ValueError."""
    if cfg.attn == "mla":
        bad = deepseek.blockers(cfg)
        if bad:
            raise ValueError(f"no exact transformers counterpart for DeepseekV2ForCausalLM: {'; '.join(bad)}. "
                             f"Supported: {'; '.join(SUPPORTED)}")
        return "deepseek_v2"
    if cfg.norm == "layernorm" or cfg.pos_enc in ("learned", "sinusoidal"):
        bad = gpt2.blockers(cfg)
        if bad:
            raise ValueError(f"no exact transformers counterpart for GPT2LMHeadModel: {'; '.join(bad)}. "
                             f"Supported: {'; '.join(SUPPORTED)}")
        return "gpt2"
    bad = _blockers(cfg, {"norm": "rmsnorm", "pos_enc": "rope"})
    if cfg.ffn == "moe_shared":
        bad.append("ffn='moe_shared' (DeepSeekMoE exists in transformers only with attn='mla': DeepSeek-V2)")
    elif cfg.ffn not in (*GATED, "moe"):
        bad.append(f"ffn={cfg.ffn!r} (needs a gated FFN: {', '.join(GATED)}; or 'moe' for Mixtral)")
    if cfg.ffn == "moe":
        if not cfg.moe_norm_topk:
            bad.append("moe_norm_topk=False (Mixtral always renormalises the top-k weights)")
        if cfg.bias or cfg.qkv_bias:
            bad.append("bias/qkv_bias=True (Mixtral has no biases)")
    if bad:
        raise ValueError(f"no exact transformers counterpart for LlamaForCausalLM: {'; '.join(bad)}. "
                         f"Supported: {'; '.join(SUPPORTED)}")
    if cfg.ffn == "moe":
        return "mixtral"
    if cfg.qkv_bias and not cfg.bias:
        return "qwen2"
    return "llama"


ARCH = {"llama": ("LlamaForCausalLM", "llama"), "qwen2": ("Qwen2ForCausalLM", "qwen2"),
        "mixtral": ("MixtralForCausalLM", "mixtral"), "gpt2": ("GPT2LMHeadModel", "gpt2"),
        "deepseek_v2": ("DeepseekV2ForCausalLM", "deepseek_v2")}


def to_hf_config(cfg: TransformerConfig, special: dict[str, int | None] | None = None) -> tuple[str, dict]:
    """``(family, config.json dict)`` for ``cfg``; ``special`` holds bos/eos/pad token ids."""
    family = _family(cfg)
    arch, model_type = ARCH[family]
    special = special or {}
    ids = {f"{k}_token_id": special.get(k) for k in ("bos", "eos", "pad")}
    if family == "deepseek_v2":
        d = deepseek.to_config(cfg)
    elif family == "gpt2":
        d = gpt2.to_config(cfg)
    else:
        d = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
             "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
             "head_dim": cfg.head_dim, "intermediate_size": cfg.hidden_dim,
             "hidden_act": hidden_act(cfg) if cfg.ffn in GATED else "silu",
             "max_position_embeddings": cfg.max_seq, "rms_norm_eps": cfg.eps,
             "rope_theta": cfg.rope_theta,
             "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
             "attention_dropout": 0.0}  # our dropout is training-only; inference is identical
        if family == "llama":
            d.update(attention_bias=cfg.bias, mlp_bias=cfg.bias)
        elif family == "qwen2":
            d.update(use_sliding_window=False, sliding_window=None, max_window_layers=cfg.n_layers)
        else:
            d.update(num_local_experts=cfg.n_experts, num_experts_per_tok=cfg.top_k,
                     intermediate_size=cfg.moe_hidden_dim, sliding_window=None,
                     router_aux_loss_coef=cfg.moe_aux_weight, router_jitter_noise=0.0,
                     output_router_logits=False)
    d.update(architectures=[arch], model_type=model_type, tie_word_embeddings=cfg.tie_weights,
             initializer_range=cfg.init_std, **ids)
    return family, d


def from_hf_config(d: dict, max_seq: int | None = None) -> tuple[str, TransformerConfig]:
    """``(family, TransformerConfig)`` from a transformers ``config.json`` dict, or ValueError.

    ``max_seq`` (the context the caller will use; default ``max_position_embeddings``) decides
    whether a sliding attention window matters: a window at least that long never cuts."""
    mt = d.get("model_type")
    if mt == "deepseek_v2":
        return mt, deepseek.from_config(d, max_seq)
    if mt == "gpt2":
        return "gpt2", gpt2.from_config(d)
    if mt not in ("llama", "mistral", "qwen2", "mixtral"):
        raise ValueError(f"model_type={mt!r} is not supported; supported: llama, mistral, qwen2, mixtral, "
                         "deepseek_v2, gpt2")
    bad = []
    act = d.get("hidden_act", "silu")
    gated = gated_ffn(act)
    if gated is None or (mt == "mixtral" and gated[0] != "swiglu"):
        bad.append(f"hidden_act={act!r}")
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        bad.append(f"rope scaling {rope!r}")
    sw = d.get("sliding_window")
    context = max_seq or d.get("max_position_embeddings", 2048)
    if sw is not None and (mt != "qwen2" or d.get("use_sliding_window")) and sw < context:
        bad.append(f"sliding_window={sw} < max_seq={context} (load with max_seq={sw} to stay inside the window)")
    if d.get("mlp_bias") and not d.get("attention_bias"):
        bad.append("mlp_bias=True without attention_bias")
    if bad:
        raise ValueError(f"{mt} config not representable exactly: {', '.join(bad)}")
    theta = rope.get("rope_theta", d.get("rope_theta", 10000.0))
    h, kv = d["num_attention_heads"], d.get("num_key_value_heads") or d["num_attention_heads"]
    max_seq = d.get("max_position_embeddings", 2048)
    dim = d["hidden_size"]
    attn = "mha" if kv == h else "mqa" if kv == 1 else "gqa"
    kw = dict(vocab_size=d["vocab_size"], dim=dim, n_layers=d["num_hidden_layers"], n_heads=h,
              head_dim=d.get("head_dim") or dim // h, max_seq=max_seq, attn=attn,
              n_kv_heads=kv, norm="rmsnorm", eps=d.get("rms_norm_eps", 1e-6), pos_enc="rope",
              rope_theta=float(theta), tie_weights=bool(d.get("tie_word_embeddings", False)),
              init_std=d.get("initializer_range", 0.02))
    if mt == "mixtral":
        kw.update(ffn="moe", n_experts=d["num_local_experts"], top_k=d["num_experts_per_tok"],
                  hidden_dim=d["intermediate_size"], moe_hidden_dim=d["intermediate_size"],
                  moe_norm_topk=True, moe_aux_weight=d.get("router_aux_loss_coef", 0.01))
    else:
        kw.update(ffn=gated[0], gelu=gated[1], hidden_dim=d["intermediate_size"])
    if mt == "qwen2":
        kw.update(qkv_bias=True)
    elif mt == "llama" and d.get("attention_bias"):
        if not d.get("mlp_bias"):
            raise ValueError("llama config with attention_bias=True but mlp_bias=False is not representable "
                             "(our bias=True covers every linear)")
        kw.update(bias=True)
    return ("llama" if mt == "mistral" else mt), TransformerConfig(**kw)

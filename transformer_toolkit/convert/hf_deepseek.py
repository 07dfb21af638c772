"""DeepSeek-V2 (``DeepseekV2ForCausalLM``): our ``attn="mla"`` with dense SwiGLU or ``moe_shared``.

Our MLA is DeepSeek-V2's (low-rank KV latent with an RMSNorm, decoupled shared RoPE key, optional
low-rank queries, softmax scale ``1/sqrt(head_dim + rope_head_dim)``), and ``moe_shared`` is
DeepSeekMoE (softmax router, greedy top-k, shared experts held as one SwiGLU of
``n_shared * moe_hidden_dim``). The mapping is exact under these conditions, checked both ways:

- ``eps == 1e-6``: transformers builds the two latent norms with a fixed 1e-6;
- no biases; ``moe_norm_topk=False`` and ``routed_scaling_factor == 1`` (DeepSeek-V2 does not
  renormalise the top-k weights); every layer the same FFN (``first_k_dense_replace`` is 0 for
  MoE, ``n_layers`` for dense), greedy routing, no RoPE scaling.

transformers applies RoPE to DeepSeek-V2 in the interleaved layout (pairs ``(2i, 2i+1)``,
complex multiplication) where we use ``rotate_half`` (pairs ``(i, i + r/2)``); the rows of the
rope part of the q and kv_a projections are permuted on the way out and back on the way in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.config import TransformerConfig

LATENT_EPS = 1e-6

_ATTN = {"q_proj": "q_proj", "q_a_proj": "q_a_proj", "q_a_norm": "q_a_layernorm", "q_b_proj": "q_b_proj",
         "kv_a_proj": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm", "kv_b_proj": "kv_b_proj",
         "o_proj": "o_proj"}
_DENSE = ("gate_proj", "up_proj", "down_proj")


def blockers(cfg: TransformerConfig) -> list[str]:
    """The fields that keep an ``attn="mla"`` config from being exactly DeepSeek-V2 (empty: exact)."""
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in (("norm", "rmsnorm"), ("pos_enc", "rope"))
           if getattr(cfg, k) != v]
    if cfg.ffn not in ("swiglu", "moe_shared"):
        bad.append(f"ffn={cfg.ffn!r} (DeepSeek-V2 needs 'swiglu' or 'moe_shared')")
    if cfg.ffn == "moe_shared":
        if cfg.moe_norm_topk:
            bad.append("moe_norm_topk=True (DeepSeek-V2 does not renormalise the top-k weights; set it False)")
        if cfg.moe_n_shared < 1:
            bad.append("moe_n_shared=0 (DeepSeek-V2 has at least one shared expert)")
    if cfg.bias or cfg.qkv_bias:
        bad.append("bias/qkv_bias=True (DeepSeek-V2 MLA has no biases)")
    if cfg.eps != LATENT_EPS:
        bad.append(f"eps={cfg.eps!r} (transformers' DeepSeek-V2 latent norms use 1e-06)")
    if cfg.dim % cfg.n_heads:
        bad.append(f"dim={cfg.dim} not divisible by n_heads={cfg.n_heads}")
    return bad


def to_config(cfg: TransformerConfig) -> dict:
    moe = cfg.ffn == "moe_shared"
    d = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
         "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
         "kv_lora_rank": cfg.latent_dim, "q_lora_rank": cfg.q_latent_dim,
         "qk_nope_head_dim": cfg.head_dim, "v_head_dim": cfg.head_dim, "qk_rope_head_dim": cfg.rope_head_dim,
         "intermediate_size": cfg.hidden_dim, "hidden_act": "silu", "max_position_embeddings": cfg.max_seq,
         "rms_norm_eps": cfg.eps, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
         "attention_bias": False, "mlp_bias": False, "attention_dropout": 0.0,
         "first_k_dense_replace": 0 if moe else cfg.n_layers, "topk_method": "greedy", "routed_scaling_factor": 1.0,
         "norm_topk_prob": False}
    if moe:
        d.update(n_routed_experts=cfg.moe_n_routed, n_shared_experts=cfg.moe_n_shared, num_experts_per_tok=cfg.top_k,
                 moe_intermediate_size=cfg.moe_hidden_dim)
    return d


def from_config(d: dict, max_seq: int | None = None) -> TransformerConfig:
    """A DeepSeek-V2 ``config.json`` as our config, or ValueError naming what does not map."""
    n_layers = d["num_hidden_layers"]
    first_dense = d.get("first_k_dense_replace", 0)
    moe = first_dense < n_layers
    rope = d.get("rope_parameters") or d.get("rope_scaling") or {}
    bad = []
    if rope.get("rope_type", rope.get("type", "default")) not in ("default", None):
        bad.append(f"rope scaling {rope!r}")
    if moe and first_dense != 0:
        bad.append(f"first_k_dense_replace={first_dense} (our layers all use the same FFN)")
    if d.get("qk_nope_head_dim") != d.get("v_head_dim"):
        bad.append(f"qk_nope_head_dim={d.get('qk_nope_head_dim')} != v_head_dim={d.get('v_head_dim')}")
    for key, ok in (("hidden_act", "silu"), ("attention_bias", False), ("mlp_bias", False),
                    ("rms_norm_eps", LATENT_EPS)):
        if d.get(key, ok) != ok:
            bad.append(f"{key}={d[key]!r} (needs {ok!r})")
    if moe:
        for key, ok in (("topk_method", "greedy"), ("routed_scaling_factor", 1.0)):
            if d.get(key, ok) != ok:
                bad.append(f"{key}={d[key]!r} (needs {ok!r})")
        if not d.get("n_shared_experts"):
            bad.append("n_shared_experts=0")
    if bad:
        raise ValueError(f"deepseek_v2 config not representable exactly: {', '.join(bad)}")
    kw = dict(vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=n_layers,
              n_heads=d["num_attention_heads"], head_dim=d["qk_nope_head_dim"], attn="mla",
              latent_dim=d["kv_lora_rank"], q_latent_dim=d.get("q_lora_rank"), rope_head_dim=d["qk_rope_head_dim"],
              max_seq=d.get("max_position_embeddings", 2048), norm="rmsnorm", eps=LATENT_EPS, pos_enc="rope",
              rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
              tie_weights=bool(d.get("tie_word_embeddings", False)), init_std=d.get("initializer_range", 0.02),
              hidden_dim=d["intermediate_size"], ffn="swiglu")
    if moe:
        n_shared, n_routed = d["n_shared_experts"], d["n_routed_experts"]
        kw.update(ffn="moe_shared", n_experts=n_shared + n_routed, moe_n_shared=n_shared, moe_n_routed=n_routed,
                  top_k=d["num_experts_per_tok"], moe_hidden_dim=d["moe_intermediate_size"], moe_norm_topk=False)
    return TransformerConfig(**kw)


def _interleave(r: int) -> Tensor:
    """Row order that turns our rotate_half rope layout into the interleaved one: new[j] = ours[perm[j]]."""
    return torch.tensor([j // 2 if j % 2 == 0 else r // 2 + j // 2 for j in range(r)])


def _permute_rope_rows(w: Tensor, head: int, nope: int, r: int, perm: Tensor) -> Tensor:
    """Permute rows ``nope:nope+r`` of every ``head``-row block of ``w`` (out, in)."""
    blocks = w.reshape(-1, head, *w.shape[1:]).clone()
    blocks[:, nope:nope + r] = blocks[:, nope:nope + r][:, perm]
    return blocks.reshape(w.shape)


def _rope_rows(name: str, w: Tensor, cfg: TransformerConfig, perm: Tensor) -> Tensor:
    hd, r, L = cfg.head_dim, cfg.rope_head_dim, cfg.latent_dim
    if name in ("q_proj", "q_b_proj"):
        return _permute_rope_rows(w, hd + r, hd, r, perm)
    if name == "kv_a_proj":
        return _permute_rope_rows(w, L + r, L, r, perm)
    return w


def _one_to_one(cfg: TransformerConfig, i: int) -> list[tuple[str, str]]:
    """(our key, DeepSeek-V2 key) of layer ``i``'s tensors that map one to one (all but attention
    and the routed experts)."""
    o, t = f"blocks.{i}.", f"model.layers.{i}."
    pairs = [(o + "attn_norm.weight", t + "input_layernorm.weight"),
             (o + "ffn_norm.weight", t + "post_attention_layernorm.weight")]
    if cfg.ffn == "swiglu":
        return pairs + [(f"{o}ffn.{p}.weight", f"{t}mlp.{p}.weight") for p in _DENSE]
    return pairs + [(o + "ffn.routed.router.weight", t + "mlp.gate.weight")] + \
        [(f"{o}ffn.shared.{p}.weight", f"{t}mlp.shared_experts.{p}.weight") for p in _DENSE]


def to_weights(sd: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Our state dict -> DeepSeek-V2 checkpoint keys (experts one by one, as published checkpoints store them)."""
    perm = _interleave(cfg.rope_head_dim)
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"model.layers.{i}."
        out.update({theirs: sd[ours] for ours, theirs in _one_to_one(cfg, i)})
        for ours, theirs in _ATTN.items():
            if f"{o}attn.{ours}.weight" in sd:
                out[f"{t}self_attn.{theirs}.weight"] = _rope_rows(ours, sd[f"{o}attn.{ours}.weight"], cfg, perm)
        if cfg.ffn != "swiglu":
            for p in _DENSE:
                for e, w in enumerate(sd[f"{o}ffn.routed.experts.{p}"]):
                    out[f"{t}mlp.experts.{e}.{p}.weight"] = w
    return out


def from_weights(hf, cfg: TransformerConfig) -> dict[str, Tensor]:
    """DeepSeek-V2 checkpoint keys -> our state dict (per-expert or fused expert layouts)."""
    inv = torch.argsort(_interleave(cfg.rope_head_dim))
    sd = {"embed.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"model.layers.{i}."
        sd.update({ours: hf[theirs] for ours, theirs in _one_to_one(cfg, i)})
        for ours, theirs in _ATTN.items():
            if f"{t}self_attn.{theirs}.weight" in hf:
                sd[f"{o}attn.{ours}.weight"] = _rope_rows(ours, hf[f"{t}self_attn.{theirs}.weight"], cfg, inv)
        if cfg.ffn == "swiglu":
            continue
        if t + "mlp.experts.gate_up_proj" in hf:  # fused (E, 2H, D), as transformers 5 holds it in memory
            gu, H = hf[t + "mlp.experts.gate_up_proj"], cfg.moe_hidden_dim
            sd[o + "ffn.routed.experts.gate_proj"], sd[o + "ffn.routed.experts.up_proj"] = gu[:, :H], gu[:, H:]
            sd[o + "ffn.routed.experts.down_proj"] = hf[t + "mlp.experts.down_proj"]
            continue
        for p in _DENSE:
            sd[f"{o}ffn.routed.experts.{p}"] = torch.stack(
                [hf[f"{t}mlp.experts.{e}.{p}.weight"] for e in range(cfg.moe_n_routed)])
    return sd

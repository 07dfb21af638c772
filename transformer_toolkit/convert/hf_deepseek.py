"""DeepSeek-V2 (``DeepseekV2ForCausalLM``): our ``attn="mla"`` with dense SwiGLU or ``moe_shared``.

Our MLA is DeepSeek-V2's (low-rank KV latent with an RMSNorm, decoupled shared RoPE key, optional
low-rank queries, softmax scale ``1/sqrt(head_dim + rope_head_dim)``), and ``moe_shared`` is
DeepSeekMoE (softmax router, greedy top-k, shared experts held as one SwiGLU of
``n_shared * moe_hidden_dim``). The mapping is exact under these conditions, checked both ways:

- ``eps == 1e-6``: transformers builds the two latent norms with a fixed 1e-6;
- ``moe_norm_topk=False`` and ``routed_scaling_factor == 1`` (DeepSeek-V2 does not renormalise
  the top-k weights); every layer the same FFN (``first_k_dense_replace`` is 0 for MoE,
  ``n_layers`` for dense), greedy routing, no RoPE scaling; a dense FFN may be any gated kind
  (``hidden_act``), experts are SwiGLU.

Parameters DeepSeek-V2 has and we lack are exported as exact fillers and dropped again on import:
``bias=True`` (our MLA biases only its output projection) is ``attention_bias=True`` with zero
biases on ``q_a_proj`` and ``kv_a_proj_with_mqa``; ``moe_n_shared=0`` is one shared expert of
zeros (transformers always builds one).

transformers applies RoPE to DeepSeek-V2 in the interleaved layout (pairs ``(2i, 2i+1)``,
complex multiplication) where we use ``rotate_half`` (pairs ``(i, i + r/2)``); the rows of the
rope part of the q and kv_a projections are permuted on the way out and back on the way in.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.config import TransformerConfig
from .hf_act import GATED, gated_ffn, hidden_act

LATENT_EPS = 1e-6

_ATTN = {"q_proj": "q_proj", "q_a_proj": "q_a_proj", "q_a_norm": "q_a_layernorm", "q_b_proj": "q_b_proj",
         "kv_a_proj": "kv_a_proj_with_mqa", "kv_a_norm": "kv_a_layernorm", "kv_b_proj": "kv_b_proj",
         "o_proj": "o_proj"}
_DENSE = ("gate_proj", "up_proj", "down_proj")


def blockers(cfg: TransformerConfig) -> list[str]:
    """The fields that keep an ``attn="mla"`` config from being exactly DeepSeek-V2 (empty: exact)."""
    bad = [f"{k}={getattr(cfg, k)!r} (needs {v!r})" for k, v in (("norm", "rmsnorm"), ("pos_enc", "rope"))
           if getattr(cfg, k) != v]
    if cfg.ffn not in (*GATED, "moe_shared"):
        bad.append(f"ffn={cfg.ffn!r} (DeepSeek-V2 needs a gated FFN ({', '.join(GATED)}) or 'moe_shared')")
    if cfg.ffn == "moe_shared" and cfg.moe_norm_topk:
        bad.append("moe_norm_topk=True (DeepSeek-V2 does not renormalise the top-k weights; set it False)")
    if cfg.eps != LATENT_EPS:
        bad.append(f"eps={cfg.eps!r} (transformers' DeepSeek-V2 latent norms use 1e-06)")
    if cfg.dim % cfg.n_heads:
        bad.append(f"dim={cfg.dim} not divisible by n_heads={cfg.n_heads}")
    return bad


def to_config(cfg: TransformerConfig) -> dict:
    moe = cfg.ffn == "moe_shared"
    # n_shared_experts is at least 1 (a zero one stands for none); biases: see the module docstring
    d = {"vocab_size": cfg.vocab_size, "hidden_size": cfg.dim, "num_hidden_layers": cfg.n_layers,
         "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_heads,
         "kv_lora_rank": cfg.latent_dim, "q_lora_rank": cfg.q_latent_dim,
         "qk_nope_head_dim": cfg.head_dim, "v_head_dim": cfg.head_dim, "qk_rope_head_dim": cfg.rope_head_dim,
         "intermediate_size": cfg.hidden_dim, "hidden_act": "silu" if moe else hidden_act(cfg),
         "max_position_embeddings": cfg.max_seq,
         "rms_norm_eps": cfg.eps, "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
         "attention_bias": cfg.bias, "mlp_bias": cfg.bias and not moe, "attention_dropout": 0.0,
         "first_k_dense_replace": 0 if moe else cfg.n_layers, "topk_method": "greedy", "routed_scaling_factor": 1.0,
         "norm_topk_prob": False}
    if moe:
        d.update(n_routed_experts=cfg.moe_n_routed, n_shared_experts=max(1, cfg.moe_n_shared),
                 num_experts_per_tok=cfg.top_k, moe_intermediate_size=cfg.moe_hidden_dim)
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
    if d.get("rms_norm_eps", LATENT_EPS) != LATENT_EPS:
        bad.append(f"rms_norm_eps={d['rms_norm_eps']!r} (needs {LATENT_EPS!r})")
    act = d.get("hidden_act", "silu")
    gated = gated_ffn(act)
    if gated is None or (moe and gated[0] != "swiglu"):
        bad.append(f"hidden_act={act!r} (needs {'silu' if moe else 'silu, sigmoid, relu or a GELU'})")
    ab, mb = bool(d.get("attention_bias", False)), bool(d.get("mlp_bias", False))
    if mb != (ab and not moe):  # our bias=True biases the MLA output and a dense MLP, never experts
        bad.append(f"attention_bias={ab} with mlp_bias={mb} (needs mlp_bias={ab and not moe})")
    if moe:
        for key, ok in (("topk_method", "greedy"), ("routed_scaling_factor", 1.0)):
            if d.get(key, ok) != ok:
                bad.append(f"{key}={d[key]!r} (needs {ok!r})")
    if bad:
        raise ValueError(f"deepseek_v2 config not representable exactly: {', '.join(bad)}")
    kw = dict(vocab_size=d["vocab_size"], dim=d["hidden_size"], n_layers=n_layers,
              n_heads=d["num_attention_heads"], head_dim=d["qk_nope_head_dim"], attn="mla",
              latent_dim=d["kv_lora_rank"], q_latent_dim=d.get("q_lora_rank"), rope_head_dim=d["qk_rope_head_dim"],
              max_seq=d.get("max_position_embeddings", 2048), norm="rmsnorm", eps=LATENT_EPS, pos_enc="rope",
              rope_theta=float(rope.get("rope_theta", d.get("rope_theta", 10000.0))),
              tie_weights=bool(d.get("tie_word_embeddings", False)), init_std=d.get("initializer_range", 0.02),
              hidden_dim=d["intermediate_size"], ffn=gated[0], gelu=gated[1], bias=ab)
    if moe:
        n_shared, n_routed = d.get("n_shared_experts") or 0, d["n_routed_experts"]
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
    """(our key, DeepSeek-V2 key) of layer ``i``'s tensors that map one to one (all but the attention
    weights and the routed experts)."""
    o, t = f"blocks.{i}.", f"model.layers.{i}."
    pairs = [(o + "attn_norm.weight", t + "input_layernorm.weight"),
             (o + "ffn_norm.weight", t + "post_attention_layernorm.weight")]
    if cfg.bias:
        pairs.append((o + "attn.o_proj.bias", t + "self_attn.o_proj.bias"))
    if cfg.ffn != "moe_shared":
        kinds = ("weight", "bias") if cfg.bias else ("weight",)
        return pairs + [(f"{o}ffn.{p}.{k}", f"{t}mlp.{p}.{k}") for p in _DENSE for k in kinds]
    pairs.append((o + "ffn.routed.router.weight", t + "mlp.gate.weight"))
    if cfg.moe_n_shared:
        pairs += [(f"{o}ffn.shared.{p}.weight", f"{t}mlp.shared_experts.{p}.weight") for p in _DENSE]
    return pairs


def _fillers(cfg: TransformerConfig, i: int) -> dict[str, tuple[int, ...]]:
    """DeepSeek-V2 key -> shape of layer ``i``'s tensors we have no parameter for, exported as zeros:
    the q_a / kv_a biases of ``attention_bias`` and the shared expert that stands for none."""
    t, D, H = f"model.layers.{i}.", cfg.dim, cfg.moe_hidden_dim
    out = {}
    if cfg.bias:
        out[t + "self_attn.kv_a_proj_with_mqa.bias"] = (cfg.latent_dim + cfg.rope_head_dim,)
        if cfg.q_latent_dim:
            out[t + "self_attn.q_a_proj.bias"] = (cfg.q_latent_dim,)
    if cfg.ffn == "moe_shared" and not cfg.moe_n_shared:
        shapes = {"gate_proj": (H, D), "up_proj": (H, D), "down_proj": (D, H)}
        out.update({f"{t}mlp.shared_experts.{p}.weight": shape for p, shape in shapes.items()})
    return out


def to_weights(sd: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Our state dict -> DeepSeek-V2 checkpoint keys (experts one by one, as published checkpoints store them)."""
    perm = _interleave(cfg.rope_head_dim)
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"model.layers.{i}."
        out.update({theirs: sd[ours] for ours, theirs in _one_to_one(cfg, i)})
        dt = sd["embed.weight"].dtype
        out.update({k: torch.zeros(shape, dtype=dt) for k, shape in _fillers(cfg, i).items()})
        for ours, theirs in _ATTN.items():
            if f"{o}attn.{ours}.weight" in sd:
                out[f"{t}self_attn.{theirs}.weight"] = _rope_rows(ours, sd[f"{o}attn.{ours}.weight"], cfg, perm)
        if cfg.ffn == "moe_shared":
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
        for key in _fillers(cfg, i):
            if hf[key].any():  # read either way: a dropped filler counts as used
                raise ValueError(f"{key} is not zero: our MLA has no parameter for it, so this checkpoint is "
                                 "not representable exactly")
        for ours, theirs in _ATTN.items():
            if f"{t}self_attn.{theirs}.weight" in hf:
                sd[f"{o}attn.{ours}.weight"] = _rope_rows(ours, hf[f"{t}self_attn.{theirs}.weight"], cfg, inv)
        if cfg.ffn != "moe_shared":
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


def drop_fillers(cfg: TransformerConfig, hf: dict[str, Tensor]) -> TransformerConfig:
    """``cfg`` with ``moe_n_shared=0`` when every layer's shared expert is all zeros (what our export
    writes for none; transformers always builds one)."""
    keys = [f"model.layers.{i}.mlp.shared_experts.{p}.weight" for i in range(cfg.n_layers) for p in _DENSE]
    if cfg.ffn != "moe_shared" or not cfg.moe_n_shared or any(k not in hf or hf[k].any() for k in keys):
        return cfg
    return TransformerConfig(**{**cfg.to_dict(), "moe_n_shared": 0, "n_experts": cfg.moe_n_routed})

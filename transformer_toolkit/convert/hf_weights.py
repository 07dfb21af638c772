"""State-dict adapters between our ``Transformer`` and transformers checkpoints.

Our names already follow HF Llama (``q_proj``, ``gate_proj``...), and RoPE uses the same
``rotate_half`` layout, so Llama/Qwen2 need only a key rename. Mixtral's experts are stored
per expert (``block_sparse_moe.experts.{e}.w1/w2/w3``, the layout of the published
checkpoints); GPT-2 fuses q/k/v into ``c_attn`` and its ``Conv1D`` stores weights ``(in, out)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import hf_deepseek as deepseek

_LLAMA_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight"}
for _p in ("q_proj", "k_proj", "v_proj", "o_proj"):
    for _s in ("weight", "bias"):
        _LLAMA_LAYER[f"attn.{_p}.{_s}"] = f"self_attn.{_p}.{_s}"
for _p in ("gate_proj", "up_proj", "down_proj"):
    for _s in ("weight", "bias"):
        _LLAMA_LAYER[f"ffn.{_p}.{_s}"] = f"mlp.{_p}.{_s}"


def to_hf(sd: dict[str, Tensor], family: str, n_layers: int, tied: bool, cfg=None) -> dict[str, Tensor]:
    """Our state dict -> transformers keys (contiguous tensors; no head when tied). ``cfg`` (our
    TransformerConfig) is needed for ``deepseek_v2`` only."""
    if family == "deepseek_v2":
        out = deepseek.to_weights(sd, cfg)
    else:
        out = _to_gpt2(sd, n_layers) if family == "gpt2" else _to_llama(sd, n_layers, family)
    if not tied:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


# Buffers some checkpoints carry that hold no weights (recomputed by every implementation).
_IGNORED = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def from_hf(hf: dict[str, Tensor], family: str, n_layers: int, tied: bool, cfg=None) -> dict[str, Tensor]:
    """transformers keys -> our state dict (``head.weight`` from ``lm_head`` or the embedding).

    Every tensor of the checkpoint must be used: a weight the mapping does not know (a bias the
    config did not announce, an extra layer) raises instead of being dropped silently."""
    seen = _Seen(hf)
    if family == "deepseek_v2":
        sd = deepseek.from_weights(seen, cfg)
    else:
        sd = _from_gpt2(seen, n_layers) if family == "gpt2" else _from_llama(seen, n_layers, family)
    head = seen.get("lm_head.weight")
    if not tied and head is None:
        raise ValueError("config.json says tie_word_embeddings=false but the checkpoint has no lm_head.weight; "
                         "the folder is incomplete or its config is wrong")
    sd["head.weight"] = sd["embed.weight"] if tied or head is None else head
    unused = sorted(k for k in hf if k not in seen.used and not k.endswith(_IGNORED))
    if unused and not (tied and unused == ["lm_head.weight"]):
        more = f" (+{len(unused) - 5} more)" if len(unused) > 5 else ""
        raise ValueError(f"checkpoint tensors not used by the {family} mapping: {', '.join(unused[:5])}{more}; "
                         "its config.json does not describe these weights, so loading would change the model")
    return sd


class _Seen(dict):
    """The checkpoint dict, recording which keys the mapping reads."""

    def __init__(self, hf: dict[str, Tensor]):
        super().__init__(hf)
        self.used: set[str] = set()

    def __getitem__(self, key: str) -> Tensor:
        if key not in self:
            raise ValueError(f"the checkpoint has no tensor {key!r}, which its config.json calls for; "
                             "the folder is incomplete or holds another architecture")
        self.used.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default=None):
        if key in self:
            self.used.add(key)
        return super().get(key, default)


def _to_llama(sd: dict[str, Tensor], n_layers: int, family: str) -> dict[str, Tensor]:
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"]}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in _LLAMA_LAYER.items():
            if ours + a in sd:
                out[theirs + b] = sd[ours + a]
        if family == "mixtral":
            moe = theirs + "block_sparse_moe."
            out[moe + "gate.weight"] = sd[ours + "ffn.router.weight"]
            for name, w in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
                for e, t in enumerate(sd[ours + f"ffn.experts.{w}"]):
                    out[moe + f"experts.{e}.{name}.weight"] = t
    return out


def _from_llama(hf: dict[str, Tensor], n_layers: int, family: str) -> dict[str, Tensor]:
    sd = {"embed.weight": hf["model.embed_tokens.weight"], "norm.weight": hf["model.norm.weight"]}
    for i in range(n_layers):
        ours, theirs = f"blocks.{i}.", f"model.layers.{i}."
        for a, b in _LLAMA_LAYER.items():
            if theirs + b in hf:
                sd[ours + a] = hf[theirs + b]
        if family != "mixtral":
            continue
        if theirs + "mlp.gate.weight" in hf:  # fused layout (transformers >= 5 in memory)
            gu = hf[theirs + "mlp.experts.gate_up_proj"]  # (E, 2H, D)
            H = gu.shape[1] // 2
            sd[ours + "ffn.router.weight"] = hf[theirs + "mlp.gate.weight"]
            sd[ours + "ffn.experts.gate_proj"], sd[ours + "ffn.experts.up_proj"] = gu[:, :H], gu[:, H:]
            sd[ours + "ffn.experts.down_proj"] = hf[theirs + "mlp.experts.down_proj"]
            continue
        moe = theirs + "block_sparse_moe."
        sd[ours + "ffn.router.weight"] = hf[moe + "gate.weight"]
        n = sum(1 for k in hf if k.startswith(moe + "experts.") and k.endswith(".w1.weight"))
        for name, w in (("w1", "gate_proj"), ("w3", "up_proj"), ("w2", "down_proj")):
            sd[ours + f"ffn.experts.{w}"] = torch.stack([hf[moe + f"experts.{e}.{name}.weight"] for e in range(n)])
    return sd


def _to_gpt2(sd: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": sd["pos.weight"],
           "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
    for i in range(n_layers):
        o, t = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            out[t + b + ".weight"], out[t + b + ".bias"] = sd[o + a + ".weight"], sd[o + a + ".bias"]
        qkv = [o + f"attn.{p}_proj" for p in "qkv"]
        out[t + "attn.c_attn.weight"] = torch.cat([sd[p + ".weight"] for p in qkv]).t()  # Conv1D: (in, out)
        out[t + "attn.c_attn.bias"] = torch.cat([sd[p + ".bias"] for p in qkv])
        for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("ffn.up_proj", "mlp.c_fc"),
                             ("ffn.down_proj", "mlp.c_proj")):
            out[t + theirs + ".weight"] = sd[o + ours + ".weight"].t()
            out[t + theirs + ".bias"] = sd[o + ours + ".bias"]
    return out


def _from_gpt2(hf: dict[str, Tensor], n_layers: int) -> dict[str, Tensor]:
    p = "transformer." if "transformer.wte.weight" in hf else ""  # GPT2LMHeadModel vs bare GPT2Model keys
    sd = {"embed.weight": hf[p + "wte.weight"], "pos.weight": hf[p + "wpe.weight"],
          "norm.weight": hf[p + "ln_f.weight"], "norm.bias": hf[p + "ln_f.bias"]}
    for i in range(n_layers):
        o, t = f"blocks.{i}.", f"{p}h.{i}."
        for a, b in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            sd[o + a + ".weight"], sd[o + a + ".bias"] = hf[t + b + ".weight"], hf[t + b + ".bias"]
        w, b = hf[t + "attn.c_attn.weight"].t(), hf[t + "attn.c_attn.bias"]
        for j, (wp, bp) in enumerate(zip(w.chunk(3), b.chunk(3), strict=True)):
            sd[o + f"attn.{'qkv'[j]}_proj.weight"], sd[o + f"attn.{'qkv'[j]}_proj.bias"] = wp, bp
        for ours, theirs in (("attn.o_proj", "attn.c_proj"), ("ffn.up_proj", "mlp.c_fc"),
                             ("ffn.down_proj", "mlp.c_proj")):
            sd[o + ours + ".weight"] = hf[t + theirs + ".weight"].t()
            sd[o + ours + ".bias"] = hf[t + theirs + ".bias"]
    return sd

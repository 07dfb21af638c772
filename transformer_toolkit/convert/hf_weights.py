"""State-dict adapters between our ``Transformer`` and transformers checkpoints.

Our names already follow HF Llama (``q_proj``, ``gate_proj``...), and RoPE uses the same
``rotate_half`` layout, so Llama/Qwen2 need only a key rename. Mixtral's experts are stored
per expert (``block_sparse_moe.experts.{e}.w1/w2/w3``, the layout of the published
checkpoints). GPT-2 and DeepSeek-V2 have their own modules (hf_gpt2.py, hf_deepseek.py).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import hf_deepseek as deepseek
from . import hf_gpt2 as gpt2

_LLAMA_LAYER = {"attn_norm.weight": "input_layernorm.weight", "ffn_norm.weight": "post_attention_layernorm.weight"}
for _p in ("q_proj", "k_proj", "v_proj", "o_proj"):
    for _s in ("weight", "bias"):
        _LLAMA_LAYER[f"attn.{_p}.{_s}"] = f"self_attn.{_p}.{_s}"
for _p in ("gate_proj", "up_proj", "down_proj"):
    for _s in ("weight", "bias"):
        _LLAMA_LAYER[f"ffn.{_p}.{_s}"] = f"mlp.{_p}.{_s}"


def to_hf(sd: dict[str, Tensor], family: str, n_layers: int, tied: bool, cfg=None) -> dict[str, Tensor]:
    """Our state dict -> transformers keys (contiguous tensors; no head when tied). ``cfg`` (our
    TransformerConfig) is needed for ``deepseek_v2`` and ``gpt2`` only."""
    if family == "deepseek_v2":
        out = deepseek.to_weights(sd, cfg)
    elif family == "gpt2":
        out = gpt2.to_weights(sd, cfg)
    else:
        out = _to_llama(sd, n_layers, family)
    if not tied:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.detach().contiguous().clone() for k, v in out.items()}


def drop_fillers(family: str, cfg, hf: dict[str, Tensor]):
    """``cfg`` without the parameters the checkpoint holds only as exact fillers (zero biases,
    positions...: what our export adds where a transformers class has parameters our config
    lacks), so a model exported by us loads back with its own config."""
    if family == "gpt2":
        return gpt2.drop_fillers(cfg, hf)
    if family == "deepseek_v2":
        return deepseek.drop_fillers(cfg, hf)
    return cfg


# Buffers some checkpoints carry that hold no weights (recomputed by every implementation).
_IGNORED = ("rotary_emb.inv_freq", ".attn.bias", ".attn.masked_bias")


def from_hf(hf: dict[str, Tensor], family: str, n_layers: int, tied: bool, cfg=None) -> dict[str, Tensor]:
    """transformers keys -> our state dict (``head.weight`` from ``lm_head`` or the embedding).

    Every tensor of the checkpoint must be used: a weight the mapping does not know (a bias the
    config did not announce, an extra layer) raises instead of being dropped silently."""
    seen = _Seen(hf)
    if family == "deepseek_v2":
        sd = deepseek.from_weights(seen, cfg)
    elif family == "gpt2":
        sd = gpt2.from_weights(seen, cfg)
    else:
        sd = _from_llama(seen, n_layers, family)
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

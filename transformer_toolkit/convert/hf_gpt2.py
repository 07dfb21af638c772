"""GPT-2 (``GPT2LMHeadModel``): our layernorm models with multi-head attention, a GELU or ReLU
MLP, and learned, sinusoidal or no positions.

GPT2LMHeadModel always has a bias on every linear but the head and a learned position table.
A config without them is exported exactly by filling them in: zero biases (``bias=False``; with
``qkv_bias=True`` only the q/k/v part of ``c_attn.bias`` is ours), a zero position table
(``pos_enc="none"``) or the sinusoidal table itself (``pos_enc="sinusoidal"``). Loading reverses
it: fillers that hold exactly their fill value are dropped and the config gets back the setting
that made them (``drop_fillers``), so a model comes back as it went out, and fine-tuning it does
not start training biases it never had. A real GPT-2 has non-zero biases and positions and loads
as ``bias=True``, ``pos_enc="learned"``.

GPT-2 fuses q/k/v into ``c_attn`` and its ``Conv1D`` stores weights ``(in, out)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..model.config import TransformerConfig
from ..model.position import SinusoidalPE

POSITIONS = ("learned", "sinusoidal", "none")
# our ffn (and gelu) -> activation_function; and back (gelu_pytorch_tanh is gelu_new's fused form)
_ACT = {("ffn", "tanh"): "gelu_new", ("ffn", "exact"): "gelu", ("relu_ffn", "tanh"): "relu"}
_FROM_ACT = {"gelu_new": ("ffn", "tanh"), "gelu_pytorch_tanh": ("ffn", "tanh"), "gelu": ("ffn", "exact"),
             "relu": ("relu_ffn", "tanh")}
_LINEARS = (("attn.o_proj", "attn.c_proj"), ("ffn.up_proj", "mlp.c_fc"), ("ffn.down_proj", "mlp.c_proj"))


def blockers(cfg: TransformerConfig) -> list[str]:
    """The fields that keep ``cfg`` from being exactly a GPT-2 (empty: exact)."""
    bad = [] if cfg.norm == "layernorm" else [f"norm={cfg.norm!r} (needs 'layernorm')"]
    if cfg.pos_enc not in POSITIONS:
        bad.append(f"pos_enc={cfg.pos_enc!r} (needs 'learned', 'sinusoidal' or 'none')")
    if cfg.ffn not in ("ffn", "relu_ffn"):
        bad.append(f"ffn={cfg.ffn!r} (needs 'ffn' or 'relu_ffn')")
    if cfg.attn not in ("mha", "flash") or cfg.n_kv_heads != cfg.n_heads:
        bad.append(f"attn={cfg.attn!r} with n_kv_heads={cfg.n_kv_heads} (needs mha)")
    if cfg.head_dim * cfg.n_heads != cfg.dim:
        bad.append(f"head_dim={cfg.head_dim} (needs dim // n_heads)")
    return bad


def to_config(cfg: TransformerConfig) -> dict:
    return {"vocab_size": cfg.vocab_size, "n_embd": cfg.dim, "n_layer": cfg.n_layers, "n_head": cfg.n_heads,
            "n_positions": cfg.max_seq, "n_inner": cfg.hidden_dim,
            "activation_function": _ACT[cfg.ffn, cfg.gelu],
            "layer_norm_epsilon": cfg.eps, "resid_pdrop": cfg.dropout, "embd_pdrop": cfg.dropout,
            "attn_pdrop": cfg.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
            "reorder_and_upcast_attn": False}


def from_config(d: dict) -> TransformerConfig:
    """A GPT-2 ``config.json`` as our config (biases and learned positions; ``drop_fillers`` may
    take them away once the weights are read), or ValueError naming what does not map."""
    bad = []
    act = d.get("activation_function", "gelu_new")
    if act not in _FROM_ACT:
        bad.append(f"activation_function={act!r} (needs one of {', '.join(_FROM_ACT)})")
    for k, ok in (("scale_attn_by_inverse_layer_idx", False), ("scale_attn_weights", True),
                  ("reorder_and_upcast_attn", False)):
        if d.get(k, ok) != ok:
            bad.append(f"{k}={d[k]!r}")
    if bad:
        raise ValueError(f"GPT-2 config not representable exactly: {', '.join(bad)}")
    ffn, gelu = _FROM_ACT[act]
    n_embd = d.get("n_embd", 768)
    return TransformerConfig(
        vocab_size=d["vocab_size"], dim=n_embd, n_layers=d.get("n_layer", 12), n_heads=d.get("n_head", 12),
        max_seq=d.get("n_positions", 1024), attn="mha", ffn=ffn, hidden_dim=d.get("n_inner") or 4 * n_embd,
        norm="layernorm", eps=d.get("layer_norm_epsilon", 1e-5), pos_enc="learned",
        tie_weights=bool(d.get("tie_word_embeddings", True)), bias=True, init_std=d.get("initializer_range", 0.02),
        gelu=gelu)


def _sinusoidal(cfg: TransformerConfig, rows: int, dtype: torch.dtype) -> Tensor:
    table = SinusoidalPE(cfg.dim, rows, rms=cfg.init_std)
    table.ensure(rows)  # the whole table (a model builds its rows as it uses them)
    return table.pe.to(dtype)  # what our model adds


def to_weights(sd: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Our state dict -> GPT2LMHeadModel keys, the biases and positions we lack filled in."""
    dt, D = sd["embed.weight"].dtype, cfg.dim
    bias = lambda key, n: sd[key] if key in sd else torch.zeros(n, dtype=dt)  # noqa: E731
    pos = {"learned": lambda: sd["pos.weight"], "none": lambda: torch.zeros(cfg.max_seq, D, dtype=dt),
           "sinusoidal": lambda: _sinusoidal(cfg, cfg.max_seq, dt)}[cfg.pos_enc]()
    out = {"transformer.wte.weight": sd["embed.weight"], "transformer.wpe.weight": pos,
           "transformer.ln_f.weight": sd["norm.weight"], "transformer.ln_f.bias": sd["norm.bias"]}
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"transformer.h.{i}."
        for a, b in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            out[t + b + ".weight"], out[t + b + ".bias"] = sd[o + a + ".weight"], sd[o + a + ".bias"]
        qkv = [o + f"attn.{p}_proj" for p in "qkv"]
        out[t + "attn.c_attn.weight"] = torch.cat([sd[p + ".weight"] for p in qkv]).t()  # Conv1D: (in, out)
        out[t + "attn.c_attn.bias"] = torch.cat([bias(p + ".bias", D) for p in qkv])
        for ours, theirs in _LINEARS:
            w = sd[o + ours + ".weight"]
            out[t + theirs + ".weight"] = w.t()
            out[t + theirs + ".bias"] = bias(o + ours + ".bias", w.shape[0])
    return out


def from_weights(hf, cfg: TransformerConfig) -> dict[str, Tensor]:
    """GPT2LMHeadModel (or bare GPT2Model) keys -> our state dict. Fillers ``cfg`` has no parameter
    for are read (so the caller sees every tensor used) and left out; ``drop_fillers`` checked
    that they hold their fill value."""
    p = _prefix(hf)
    pos = hf[p + "wpe.weight"]
    sd = {"embed.weight": hf[p + "wte.weight"], "norm.weight": hf[p + "ln_f.weight"], "norm.bias": hf[p + "ln_f.bias"]}
    if cfg.pos_enc == "learned":
        sd["pos.weight"] = pos
    qkv_bias, bias = cfg.bias or cfg.qkv_bias, cfg.bias
    for i in range(cfg.n_layers):
        o, t = f"blocks.{i}.", f"{p}h.{i}."
        for a, b in (("attn_norm", "ln_1"), ("ffn_norm", "ln_2")):
            sd[o + a + ".weight"], sd[o + a + ".bias"] = hf[t + b + ".weight"], hf[t + b + ".bias"]
        w, b = hf[t + "attn.c_attn.weight"].t(), hf[t + "attn.c_attn.bias"]
        for j, (wp, bp) in enumerate(zip(w.chunk(3), b.chunk(3), strict=True)):
            sd[o + f"attn.{'qkv'[j]}_proj.weight"] = wp
            if qkv_bias:
                sd[o + f"attn.{'qkv'[j]}_proj.bias"] = bp
        for ours, theirs in _LINEARS:
            sd[o + ours + ".weight"] = hf[t + theirs + ".weight"].t()
            b = hf[t + theirs + ".bias"]  # read either way: a dropped filler counts as used
            if bias:
                sd[o + ours + ".bias"] = b
    return sd


def _prefix(hf) -> str:
    return "transformer." if "transformer.wte.weight" in hf else ""  # GPT2LMHeadModel vs bare GPT2Model


def _zero(t: Tensor) -> bool:
    return not bool(t.any())


def drop_fillers(cfg: TransformerConfig, hf: dict[str, Tensor]) -> TransformerConfig:
    """``cfg`` (as ``from_config`` made it) without the parameters the checkpoint holds only as
    fillers: every linear bias but q/k/v's zero -> ``bias=False`` (and ``qkv_bias`` when q/k/v's
    are not), a zero position table -> ``pos_enc="none"``, the sinusoidal table -> ``"sinusoidal"``."""
    p, layers = _prefix(hf), range(cfg.n_layers)
    if any(f"{p}h.{i}.attn.c_attn.bias" not in hf for i in layers) or f"{p}wpe.weight" not in hf:
        return cfg  # an incomplete checkpoint: from_weights names what is missing
    change = {}
    if all(_zero(hf[f"{p}h.{i}.{theirs}.bias"]) for i in layers for _, theirs in _LINEARS
           if f"{p}h.{i}.{theirs}.bias" in hf):
        change["bias"] = False
        change["qkv_bias"] = not all(_zero(hf[f"{p}h.{i}.attn.c_attn.bias"]) for i in layers)
    pos = hf[f"{p}wpe.weight"]
    if _zero(pos):
        change["pos_enc"] = "none"
    elif pos.shape[1] == cfg.dim and torch.equal(pos, _sinusoidal(cfg, pos.shape[0], pos.dtype)):
        change["pos_enc"] = "sinusoidal"
    return TransformerConfig(**{**cfg.to_dict(), **change}) if change else cfg

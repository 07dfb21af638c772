"""GPT-2 as GGUF: llama.cpp's ``gpt2`` architecture (layer norms with biases, learned position
table, fused q/k/v, tanh-GELU MLP, every linear biased).

The tensors are those of the transformers export (hf_gpt2.py) under llama.cpp's names, so a
config GPT-2 lacks parameters for is written with the same fillers (zero biases, a zero or
sinusoidal position table) and read back without them. The ``Conv1D`` weights, stored ``(in, out)``
by transformers, are rows-first ``(out, in)`` here, as llama.cpp's converter writes them.
"""

from __future__ import annotations

from torch import Tensor

from ..model.config import TransformerConfig
from . import hf_gpt2

_GLOBAL = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
           "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
           "lm_head.weight": "output.weight"}
_LAYER = {"ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
          "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down"}
_CONV1D = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")
_GLOBAL_BACK = {v: k for k, v in _GLOBAL.items()}
_LAYER_BACK = {v: k for k, v in _LAYER.items()}
REQUIRED = ("context_length", "embedding_length", "block_count", "feed_forward_length", "attention.head_count",
            "attention.layer_norm_epsilon")  # gpt2.<key> metadata the importer needs


def blockers(cfg: TransformerConfig) -> list[str]:
    """What keeps ``cfg`` from llama.cpp's gpt2 (empty: it computes ``cfg`` exactly)."""
    bad = hf_gpt2.blockers(cfg)
    if cfg.ffn == "relu_ffn":
        bad.append("ffn='relu_ffn' (llama.cpp's gpt2 runs a GELU MLP)")
    if cfg.ffn == "ffn" and cfg.gelu == "exact":
        bad.append("gelu='exact' (llama.cpp's gpt2 uses the tanh GELU)")
    return bad


def write_hparams(w, cfg: TransformerConfig) -> None:
    w.add_context_length(cfg.max_seq)
    w.add_embedding_length(cfg.dim)
    w.add_block_count(cfg.n_layers)
    w.add_feed_forward_length(cfg.hidden_dim)
    w.add_head_count(cfg.n_heads)
    w.add_layer_norm_eps(cfg.eps)
    w.add_vocab_size(cfg.vocab_size)


def _gguf_name(hf_name: str) -> tuple[str, bool]:
    """``(llama.cpp name, whether the weight is a transposed Conv1D)`` of a transformers GPT-2 key."""
    if hf_name in _GLOBAL:
        return _GLOBAL[hf_name], False
    _, _, i, rest = hf_name.split(".", 3)  # transformer.h.{i}.{module}.{weight|bias}
    module, suffix = rest.rsplit(".", 1)
    return f"blk.{i}.{_LAYER[module]}.{suffix}", suffix == "weight" and module in _CONV1D


def _hf_name(name: str) -> tuple[str, bool]:
    """The inverse of ``_gguf_name``."""
    if name in _GLOBAL_BACK:
        return _GLOBAL_BACK[name], False
    _, i, module, suffix = name.split(".", 3)
    theirs = _LAYER_BACK[module]
    return f"transformer.h.{i}.{theirs}.{suffix}", suffix == "weight" and theirs in _CONV1D


def tensors(sd: dict[str, Tensor], cfg: TransformerConfig) -> dict[str, Tensor]:
    """Our state dict as llama.cpp gpt2 tensors (rows first), fillers included; no output.weight when tied."""
    out = {}
    for key, t in hf_gpt2.to_weights(sd, cfg).items():
        name, conv = _gguf_name(key)
        out[name] = t.t() if conv else t
    if not cfg.tie_weights:
        out["output.weight"] = sd["head.weight"]
    return out


def expected_names(n_layers: int, tied: bool) -> set[str]:
    """Every tensor a llama.cpp gpt2 file of ``n_layers`` blocks holds."""
    layer = [f"blk.{i}.{m}.{s}" for i in range(n_layers) for m in _LAYER.values() for s in ("weight", "bias")]
    return {*_GLOBAL.values(), *layer} - ({"output.weight"} if tied else set())


class _HFView(dict):
    """The file's tensors under transformers GPT-2 names, decoded (and Conv1D weights transposed
    back) on first access, so the filler checks of hf_gpt2 read only the biases and positions."""

    def __init__(self, file_tensors: dict, decode):
        super().__init__({_hf_name(n)[0]: n for n in file_tensors})
        self._file, self._decode, self._done = file_tensors, decode, {}

    def __getitem__(self, key: str) -> Tensor:
        if key not in self._done:
            name = super().__getitem__(key)
            t = self._decode(self._file[name])
            self._done[key] = t.t().contiguous() if _hf_name(name)[1] else t
        return self._done[key]


def config(a, file_tensors: dict, decode, f32) -> tuple[TransformerConfig, _HFView]:
    """``(our config, the tensors as transformers keys)`` of a gpt2 GGUF; ``a(key)`` reads
    ``gpt2.<key>``. Fillers are dropped (zero biases -> ``bias=False``...) as on HF import; the
    sinusoidal table is recognised at the default ``init_std`` (GGUF does not store it)."""
    cfg = TransformerConfig(
        vocab_size=a("vocab_size") or int(file_tensors["token_embd.weight"].shape[1]), dim=a("embedding_length"),
        n_layers=a("block_count"), n_heads=a("attention.head_count"), max_seq=a("context_length"), attn="mha",
        ffn="ffn", hidden_dim=a("feed_forward_length"), norm="layernorm", eps=f32(a("attention.layer_norm_epsilon")),
        pos_enc="learned", bias=True, tie_weights="output.weight" not in file_tensors)
    view = _HFView(file_tensors, decode)
    return hf_gpt2.drop_fillers(cfg, view), view


def state_dict(view: _HFView, cfg: TransformerConfig) -> dict[str, Tensor]:
    """Our state dict from the file's tensors (``config``'s view)."""
    sd = hf_gpt2.from_weights(view, cfg)
    sd["head.weight"] = sd["embed.weight"] if cfg.tie_weights else view["lm_head.weight"]
    return sd

"""The variant registries: one dict per family, from the config string to what implements it.

``TransformerConfig`` takes its valid names from these dicts (model/config.py), and ``Block`` and
``Transformer`` build their parts from them, so a new variant is one class and one entry here;
the shared suite (tests/model/test_variants.py and the tests parametrised by
``tests/model_helpers.py``) then trains, decodes and exports it like every other.
"""

from __future__ import annotations

from .attention import Attention, FlashAttention
from .ffn import FFN as PlainFFN
from .ffn import GELU, GLU, GeGLU, ReGLU, ReluFFN, SwiGLU
from .mla import MLAttention
from .moe import ExpertChoiceMoE, SharedExpertMoE, TokenChoiceMoE
from .norm import LayerNorm, RMSNorm
from .position import LearnedPE, RotaryEmbedding, SinusoidalPE, alibi_slopes

# attn: each class takes the config; mha/gqa/mqa are one module set by n_kv_heads
ATTENTION = {"mha": Attention, "gqa": Attention, "mqa": Attention, "flash": FlashAttention, "mla": MLAttention}

# ffn: each class has from_config(cfg), and forward(x, continuing) -> (y, aux loss or None)
DENSE_FFN = {"ffn": PlainFFN, "relu_ffn": ReluFFN, "glu": GLU, "reglu": ReGLU, "geglu": GeGLU, "swiglu": SwiGLU}
MOE = {"moe": TokenChoiceMoE, "moe_ec": ExpertChoiceMoE, "moe_shared": SharedExpertMoE}
FFN = {**DENSE_FFN, **MOE}

# norm: each class takes (dim, eps)
NORM = {"rmsnorm": RMSNorm, "layernorm": LayerNorm}


def _rope(cfg) -> RotaryEmbedding:
    rot = cfg.rope_head_dim if cfg.attn == "mla" else cfg.head_dim  # MLA rotates only its decoupled part
    return RotaryEmbedding(rot, cfg.max_seq, cfg.rope_theta)


# pos_enc: cfg -> (a table added to the residual stream, RoPE tables, ALiBi slopes); see position.py
POS_ENC = {
    "rope": lambda cfg: (None, _rope(cfg), None),
    "sinusoidal": lambda cfg: (SinusoidalPE(cfg.dim, cfg.max_seq, rms=cfg.init_std), None, None),
    "learned": lambda cfg: (LearnedPE(cfg.dim, cfg.max_seq), None, None),
    "alibi": lambda cfg: (None, None, alibi_slopes(cfg.n_heads)),
    "none": lambda cfg: (None, None, None),
}

__all__ = ["ATTENTION", "DENSE_FFN", "FFN", "GELU", "MOE", "NORM", "POS_ENC"]

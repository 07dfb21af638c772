"""The model: ``TransformerConfig`` and ``Transformer`` plus every swappable part."""

from .attention import (
    Attention,
    AttnContext,
    FlashAttention,
    GroupedQueryAttention,
    MultiHeadAttention,
    MultiQueryAttention,
)
from .cache import LayerCache
from .config import ATTN_KINDS, FFN_KINDS, NORM_KINDS, POS_KINDS, TransformerConfig
from .ffn import FFN, GLU, GeGLU, ReGLU, ReluFFN, SwiGLU
from .mla import MLAttention
from .moe import ExpertChoiceMoE, SharedExpertMoE, TokenChoiceMoE
from .norm import LayerNorm, RMSNorm
from .position import LearnedPE, RotaryEmbedding, SinusoidalPE
from .transformer import Block, Transformer
from .variant_fields import IgnoredFieldWarning

MoE = TokenChoiceMoE

__all__ = [
    "ATTN_KINDS", "FFN_KINDS", "NORM_KINDS", "POS_KINDS",
    "Attention", "AttnContext", "Block", "ExpertChoiceMoE", "FFN", "FlashAttention", "GLU", "GeGLU",
    "GroupedQueryAttention", "IgnoredFieldWarning", "LayerCache", "LayerNorm", "LearnedPE", "MLAttention", "MoE",
    "MultiHeadAttention", "MultiQueryAttention", "RMSNorm", "ReGLU", "ReluFFN", "RotaryEmbedding",
    "SharedExpertMoE", "SinusoidalPE", "SwiGLU", "TokenChoiceMoE", "Transformer", "TransformerConfig",
]

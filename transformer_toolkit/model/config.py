"""TransformerConfig: every architecture decision of the decoder, validated at construction.

Each variant is one string; an unknown string, an unknown field or an impossible combination
raises a ``ValueError`` that names the field and says how to fix it.

>>> cfg = TransformerConfig(vocab_size=8000, dim=384, n_layers=6, n_heads=6,
...                         attn="gqa", n_kv_heads=3, ffn="swiglu", hidden_dim=1536)
>>> TransformerConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

from pydantic import model_validator

from ..config_base import StrictConfig, check_choice
from .variants import ATTENTION, FFN, GELU, MOE, NORM, POS_ENC

# the valid names of each variant field: those of the registries the model is built from
ATTN_KINDS, FFN_KINDS, MOE_KINDS = tuple(ATTENTION), tuple(FFN), tuple(MOE)
NORM_KINDS, POS_KINDS, GELU_KINDS = tuple(NORM), tuple(POS_ENC), tuple(GELU)


class TransformerConfig(StrictConfig):
    """All architecture choices of a decoder-only transformer.

    Defaults follow the seed README. ``None`` fields are derived:
    ``n_kv_heads`` (= ``n_heads`` for mha/flash, 1 for mqa), ``hidden_dim`` (= ``4 * dim``),
    ``head_dim`` (= ``dim // n_heads``), ``moe_hidden_dim`` (= ``hidden_dim``),
    ``moe_n_routed`` (= ``n_experts - moe_n_shared``), ``rope_head_dim`` (= ``head_dim // 2``,
    MLA only).
    """


    # core
    vocab_size: int = 32000
    dim: int = 512
    n_layers: int = 8
    n_heads: int = 8
    max_seq: int = 2048
    head_dim: int | None = None  # per-head width; set explicitly for checkpoints where it != dim/n_heads

    # attention
    attn: str = "mha"
    n_kv_heads: int | None = None
    latent_dim: int = 64  # mla: width of the compressed K/V latent (DeepSeek-V2 kv_lora_rank)
    q_latent_dim: int | None = None  # mla: low-rank query compression (q_lora_rank); None = full rank
    rope_head_dim: int | None = None  # mla: width of the decoupled RoPE part of q and k

    # feed-forward
    ffn: str = "swiglu"
    hidden_dim: int | None = None
    n_experts: int = 8
    top_k: int = 2
    moe_aux_weight: float = 0.01
    moe_capacity: float = 1.0
    moe_n_shared: int = 2
    moe_n_routed: int | None = None
    moe_hidden_dim: int | None = None  # width of each expert; None = hidden_dim
    moe_norm_topk: bool = True  # renormalise the top-k routing weights to sum to 1 (Mixtral)
    gelu: str = "tanh"  # ffn/geglu: "tanh" approximation (GPT-2's gelu_new) or "exact" (erf; nanoGPT, BERT)

    # normalization
    norm: str = "rmsnorm"
    eps: float = 1e-6

    # positional encoding
    pos_enc: str = "rope"
    rope_theta: float = 10000.0

    # regularisation
    dropout: float = 0.0

    # output and linear layers
    tie_weights: bool = True
    bias: bool = False  # biases on every linear layer but the head (GPT-2 style)
    qkv_bias: bool = False  # biases on the q/k/v projections only (Qwen2 style)
    init_std: float = 0.02

    @model_validator(mode="after")
    def _validate(self) -> TransformerConfig:
        check_choice("attn", self.attn, ATTN_KINDS)
        check_choice("ffn", self.ffn, FFN_KINDS)
        check_choice("norm", self.norm, NORM_KINDS)
        check_choice("pos_enc", self.pos_enc, POS_KINDS)
        check_choice("gelu", self.gelu, GELU_KINDS)
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.eps <= 0:
            raise ValueError(f"eps must be > 0, got {self.eps}")

        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(
                    f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); "
                    f"change one of them, or set head_dim explicitly"
                )
            self.head_dim = self.dim // self.n_heads
        if self.pos_enc == "rope" and self.attn != "mla" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

        self._resolve_kv_heads()
        if self.attn == "mla":
            self._resolve_mla()

        if self.hidden_dim is None:
            self.hidden_dim = 4 * self.dim
        if self.ffn in MOE_KINDS:
            self._resolve_moe()
        return self

    def _resolve_kv_heads(self) -> None:
        h, kv = self.n_heads, self.n_kv_heads
        if self.attn == "mqa":
            if kv not in (None, 1):
                raise ValueError(f"attn='mqa' uses exactly one kv head; got n_kv_heads={kv}. "
                                 f"Use attn='gqa' for {kv} kv heads")
            self.n_kv_heads = 1
        elif self.attn == "mha":
            if kv not in (None, h):
                raise ValueError(f"attn='mha' uses n_kv_heads == n_heads ({h}); got n_kv_heads={kv}. "
                                 f"Use attn='gqa' for grouped kv heads")
            self.n_kv_heads = h
        elif self.attn == "gqa":
            if kv is None:
                raise ValueError(f"attn='gqa' needs n_kv_heads (a divisor of n_heads={h}), "
                                 f"e.g. n_kv_heads={max(1, h // 2)}")
        elif self.attn == "flash":
            self.n_kv_heads = h if kv is None else kv
        else:  # mla: every head has its own k and v, expanded from the shared latent
            if kv not in (None, h):
                raise ValueError(f"attn='mla' expands the latent to all {h} heads; leave n_kv_heads unset")
            self.n_kv_heads = h
        kv = self.n_kv_heads
        if kv < 1 or h % kv:
            raise ValueError(f"n_heads must be divisible by n_kv_heads: n_heads={h}, n_kv_heads={kv}. "
                             f"Pick n_kv_heads from the divisors of {h}")

    def _resolve_mla(self) -> None:
        if self.latent_dim < 1:
            raise ValueError(f"latent_dim must be >= 1 for attn='mla', got {self.latent_dim}")
        if self.q_latent_dim is not None and self.q_latent_dim < 1:
            raise ValueError(f"q_latent_dim must be >= 1 or None, got {self.q_latent_dim}")
        if self.pos_enc != "rope":
            if self.rope_head_dim not in (None, 0):
                raise ValueError("rope_head_dim is only used with pos_enc='rope'; leave it unset")
            self.rope_head_dim = 0
            return
        if self.rope_head_dim is None:
            self.rope_head_dim = max(2, (self.head_dim // 2) // 2 * 2)
        if self.rope_head_dim < 2 or self.rope_head_dim % 2:
            raise ValueError(f"rope_head_dim must be even and >= 2 for MLA with RoPE, got {self.rope_head_dim}")

    def _resolve_moe(self) -> None:
        if self.n_experts < 1:
            raise ValueError(f"n_experts must be >= 1, got {self.n_experts}")
        if self.moe_hidden_dim is None:
            self.moe_hidden_dim = self.hidden_dim
        if self.moe_aux_weight < 0:
            raise ValueError(f"moe_aux_weight must be >= 0, got {self.moe_aux_weight}")
        if self.ffn == "moe_shared":
            if not 0 <= self.moe_n_shared < self.n_experts:
                raise ValueError(f"moe_n_shared must be in [0, n_experts={self.n_experts}), "
                                 f"got {self.moe_n_shared}")
            if self.moe_n_routed is None:
                self.moe_n_routed = self.n_experts - self.moe_n_shared
            if self.moe_n_shared + self.moe_n_routed != self.n_experts:
                raise ValueError(
                    f"moe_n_shared ({self.moe_n_shared}) + moe_n_routed ({self.moe_n_routed}) must equal "
                    f"n_experts ({self.n_experts}); set n_experts={self.moe_n_shared + self.moe_n_routed}"
                )
            routed = self.moe_n_routed
        else:
            routed = self.n_experts
        if not 1 <= self.top_k <= routed:
            what = "moe_n_routed" if self.ffn == "moe_shared" else "n_experts"
            raise ValueError(f"top_k must be between 1 and {what} ({routed}), got {self.top_k}")
        if self.ffn == "moe_ec" and self.moe_capacity <= 0:
            raise ValueError(f"moe_capacity must be > 0 for ffn='moe_ec', got {self.moe_capacity}")

    @property
    def is_moe(self) -> bool:
        return self.ffn in MOE_KINDS

"""TransformerConfig: every architecture decision of the decoder, validated at construction.

Each variant is one string; an unknown string, an unknown field or an impossible combination
raises a ``ValueError`` that names the field and says how to fix it. A field that belongs to
another variant (``n_kv_heads`` with ``attn="mha"``, the MoE fields with a dense FFN; the table
is in variant_fields.py) is accepted and ignored, with one ``IgnoredFieldWarning`` naming every
such field, so one base config serves every variant. The config records the value the chosen
variant uses (``n_kv_heads == n_heads`` for mha, the default for a field it does not read): two
configs that build the same model are equal, and ``from_dict(cfg.to_dict())`` warns about nothing.

>>> cfg = TransformerConfig(vocab_size=8000, dim=384, n_layers=6, n_heads=6,
...                         attn="gqa", n_kv_heads=3, ffn="swiglu", hidden_dim=1536)
>>> TransformerConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

import sys
import warnings

from pydantic import model_validator

from ..config_base import StrictConfig, check_choice, check_ranges
from .variant_fields import IgnoredFieldWarning, ignored_fields
from .variants import ATTENTION, FFN, GELU, MOE, NORM, POS_ENC

# the valid names of each variant field: those of the registries the model is built from
ATTN_KINDS, FFN_KINDS, MOE_KINDS = tuple(ATTENTION), tuple(FFN), tuple(MOE)
NORM_KINDS, POS_KINDS, GELU_KINDS = tuple(NORM), tuple(POS_ENC), tuple(GELU)

# the ranges of the fields a variant may ignore: checked once ignored ones hold their defaults,
# so a value meant for another variant is ignored (with the warning), never an error
VARIANT_RANGES = {"n_kv_heads": {"ge": 1}, "latent_dim": {"ge": 1, "hint": " for attn='mla'"},
                  "q_latent_dim": {"ge": 1, "hint": " or None (full rank) for attn='mla'"},
                  "rope_theta": {"gt": 0, "hint": " for pos_enc='rope'"}, "n_experts": {"ge": 1}, "top_k": {"ge": 1},
                  "moe_hidden_dim": {"ge": 1, "hint": " or None (= hidden_dim)"}, "moe_aux_weight": {"ge": 0},
                  "moe_capacity": {"gt": 0, "hint": " for ffn='moe_ec'"}, "moe_n_shared": {"ge": 0},
                  "moe_n_routed": {"ge": 1, "hint": " or None (= n_experts - moe_n_shared)"}}


class TransformerConfig(StrictConfig):
    """All architecture choices of a decoder-only transformer.

    Defaults follow the seed README. ``None`` fields are derived:
    ``n_kv_heads`` (= ``n_heads`` for mha/flash/mla, 1 for mqa), ``hidden_dim`` (= ``4 * dim``),
    ``head_dim`` (= ``dim // n_heads``), ``moe_hidden_dim`` (= ``hidden_dim``),
    ``moe_n_routed`` (= ``n_experts - moe_n_shared``), ``rope_head_dim`` (= ``head_dim // 2``,
    MLA only). A field the chosen variants do not read (see variant_fields.py) holds its default.
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

    RANGES = {**{n: {"ge": 1} for n in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq")},
              "head_dim": {"ge": 1, "hint": " or None (= dim // n_heads)"},
              "hidden_dim": {"ge": 1, "hint": " or None (= 4 * dim)"},
              "dropout": {"ge": 0, "lt": 1}, "eps": {"gt": 0}, "init_std": {"gt": 0}}

    @model_validator(mode="after")
    def _validate(self) -> TransformerConfig:
        check_choice("attn", self.attn, ATTN_KINDS)
        check_choice("ffn", self.ffn, FFN_KINDS)
        check_choice("norm", self.norm, NORM_KINDS)
        check_choice("pos_enc", self.pos_enc, POS_KINDS)
        check_choice("gelu", self.gelu, GELU_KINDS)

        if self.head_dim is None:
            if self.dim % self.n_heads:
                raise ValueError(
                    f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}); "
                    f"change one of them, or set head_dim explicitly"
                )
            self.head_dim = self.dim // self.n_heads
        if self.pos_enc == "rope" and self.attn != "mla" and self.head_dim % 2:
            raise ValueError(f"RoPE needs an even head_dim, got {self.head_dim}")

        given = self._drop_ignored()
        check_ranges(self, VARIANT_RANGES)
        self._resolve_kv_heads()
        if self.attn == "mla":
            self._resolve_mla()

        if self.hidden_dim is None:
            self.hidden_dim = 4 * self.dim
        if self.ffn in MOE_KINDS:
            self._resolve_moe()
        self._warn_ignored(given)
        return self

    def _drop_ignored(self) -> dict:
        """Reset every explicitly set field the chosen variants do not read to its default (the
        resolution below then derives what the variant uses); return ``{field: given value}``."""
        given = {}
        for f in ignored_fields(self):
            if f.name in self.model_fields_set:
                given[f.name] = getattr(self, f.name)
                setattr(self, f.name, type(self).model_fields[f.name].default)
        return given

    def _warn_ignored(self, given: dict) -> None:
        """One warning naming every ignored field whose value differs from the recorded one (a
        recorded value, as ``to_dict()`` gives it back, is never reported)."""
        parts = [f.message(given[f.name], *f.blocker(self)) for f in ignored_fields(self)
                 if f.name in given and given[f.name] != getattr(self, f.name)]
        if parts:
            text = parts[0] if len(parts) == 1 else f"{len(parts)} fields are ignored:\n  " + "\n  ".join(parts)
            warnings.warn(text, IgnoredFieldWarning, stacklevel=_caller_level())

    def _resolve_kv_heads(self) -> None:
        h, kv = self.n_heads, self.n_kv_heads  # kv is None unless the variant reads it (gqa, flash)
        if self.attn == "mqa":
            self.n_kv_heads = 1
        elif self.attn == "gqa":
            if kv is None:
                raise ValueError(f"attn='gqa' needs n_kv_heads (a divisor of n_heads={h}), "
                                 f"e.g. n_kv_heads={max(1, h // 2)}")
        else:  # mha, flash by default, and mla (every head has its own k and v, expanded from the latent)
            self.n_kv_heads = h if kv is None else kv
        kv = self.n_kv_heads
        if kv < 1 or h % kv:
            raise ValueError(f"n_heads must be divisible by n_kv_heads: n_heads={h}, n_kv_heads={kv}. "
                             f"Pick n_kv_heads from the divisors of {h}")

    def _resolve_mla(self) -> None:
        if self.pos_enc != "rope":
            self.rope_head_dim = 0  # no rope part (an explicit value was dropped as ignored)
            return
        if self.rope_head_dim is None:
            self.rope_head_dim = max(2, (self.head_dim // 2) // 2 * 2)
        if self.rope_head_dim < 2 or self.rope_head_dim % 2:
            raise ValueError(f"rope_head_dim must be even and >= 2 for MLA with RoPE, got {self.rope_head_dim}")

    def _resolve_moe(self) -> None:
        if self.moe_hidden_dim is None:
            self.moe_hidden_dim = self.hidden_dim
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

    @property
    def is_moe(self) -> bool:
        return self.ffn in MOE_KINDS


def _caller_level() -> int:
    """The ``stacklevel`` that points a warning at the first frame outside pydantic and the config
    modules: the user's ``TransformerConfig(...)`` line."""
    frame, level = sys._getframe(1), 1
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
            ("pydantic", __name__, "transformer_toolkit.config_base")):
        frame, level = frame.f_back, level + 1
    return level

"""Which ``TransformerConfig`` fields belong to which variant: the one table behind the config's
ignore rule (a field the chosen variant does not read is accepted, ignored and named in one
``IgnoredFieldWarning``) and behind the README's table of variant fields.

So one base config serves a sweep over every variant (``TransformerConfig(**base, attn=a)``):
``n_kv_heads`` counts only for ``gqa``/``flash``, the MoE fields only for the MoE kinds, and so on.
A field not listed here (``dim``, ``hidden_dim``, ``bias``, ``eps``, ...) is read by every variant.
No field is specific to one ``norm``: ``eps`` serves both.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .variants import MOE


class IgnoredFieldWarning(UserWarning):
    """A config field was set that the chosen variant does not read; the config records the
    value the variant really uses instead."""


@dataclass(frozen=True)
class VariantField:
    """``name`` is read only when every ``family`` field of the config is one of its variants
    (``needs``: family -> variants). ``why`` says, per variant that ignores it, what that variant
    does instead (default: "does not use it"); ``fix`` how to make it count."""

    name: str
    needs: dict[str, tuple[str, ...]]
    what: str
    fix: str
    why: dict[str, str] = field(default_factory=dict)

    def blocker(self, cfg) -> tuple[str, str] | None:
        """``(family, variant)`` of ``cfg`` that ignores this field, or None when it is read."""
        for family, variants in self.needs.items():
            if getattr(cfg, family) not in variants:
                return family, getattr(cfg, family)
        return None

    def message(self, value, family: str, variant: str) -> str:
        why = self.why.get(variant, "does not use it")
        return f"{self.name}={value!r} is ignored: {family}={variant!r} {why}; {self.fix}"


_MOE = tuple(MOE)  # the mixture-of-experts kinds of the FFN registry
_SPLIT_QKV = ("mha", "gqa", "mqa", "flash")

VARIANT_FIELDS: tuple[VariantField, ...] = (
    VariantField("n_kv_heads", {"attn": ("gqa", "flash")},
                 "number of k/v heads, a divisor of `n_heads` (flash: default `n_heads`); recorded as "
                 "`n_heads` for mha and mla, 1 for mqa",
                 "use attn='gqa' for grouped kv heads",
                 {"mha": "has one kv head per query head", "mqa": "has one kv head shared by all query heads",
                  "mla": "expands its k/v latent to every head"}),
    VariantField("qkv_bias", {"attn": _SPLIT_QKV}, "biases on the q/k/v projections only (Qwen2)",
                 "use attn='mha', 'gqa', 'mqa' or 'flash' for q/k/v biases",
                 {"mla": "has no q/k/v projections (its low-rank projections carry no bias)"}),
    VariantField("latent_dim", {"attn": ("mla",)}, "width of the compressed k/v latent (kv_lora_rank)",
                 "use attn='mla' for latent attention"),
    VariantField("q_latent_dim", {"attn": ("mla",)}, "width of the low-rank query (q_lora_rank; None: full rank)",
                 "use attn='mla' for latent attention"),
    VariantField("rope_head_dim", {"attn": ("mla",), "pos_enc": ("rope",)},
                 "width of MLA's decoupled RoPE key (default `head_dim // 2`); recorded as 0 for mla without rope",
                 "MLA's decoupled RoPE key needs attn='mla' with pos_enc='rope'",
                 dict.fromkeys(("alibi", "sinusoidal", "learned", "none"), "has no RoPE")),
    VariantField("rope_theta", {"pos_enc": ("rope",)}, "RoPE base (also MLA's rope key)", "use pos_enc='rope'"),
    VariantField("gelu", {"ffn": ("ffn", "geglu")}, "GELU form: `tanh` (GPT-2's gelu_new) or `exact` (erf)",
                 "use ffn='ffn' or ffn='geglu'"),
    VariantField("n_experts", {"ffn": _MOE}, "experts per layer (moe_shared: shared + routed)",
                 "use ffn='moe', 'moe_ec' or 'moe_shared'"),
    VariantField("top_k", {"ffn": _MOE}, "experts per token (moe_ec: in cached decoding)",
                 "use ffn='moe', 'moe_ec' or 'moe_shared'"),
    VariantField("moe_hidden_dim", {"ffn": _MOE}, "width of each expert (default `hidden_dim`)",
                 "use ffn='moe', 'moe_ec' or 'moe_shared'"),
    VariantField("moe_aux_weight", {"ffn": ("moe", "moe_shared")}, "weight of the load-balancing loss",
                 "use ffn='moe' or 'moe_shared'",
                 {"moe_ec": "balances load by construction (no auxiliary loss)"}),
    VariantField("moe_norm_topk", {"ffn": ("moe", "moe_shared")}, "renormalise the top-k routing weights (Mixtral)",
                 "use ffn='moe' or 'moe_shared'",
                 {"moe_ec": "always renormalises its decode-time top-k weights"}),
    VariantField("moe_capacity", {"ffn": ("moe_ec",)}, "expert-choice capacity factor", "use ffn='moe_ec'"),
    VariantField("moe_n_shared", {"ffn": ("moe_shared",)}, "always-on experts", "use ffn='moe_shared'"),
    VariantField("moe_n_routed", {"ffn": ("moe_shared",)}, "routed experts (default `n_experts - moe_n_shared`)",
                 "use ffn='moe_shared'"),
)
BY_NAME = {f.name: f for f in VARIANT_FIELDS}


def ignored_fields(cfg) -> list[VariantField]:
    """The table's fields that ``cfg``'s variants do not read."""
    return [f for f in VARIANT_FIELDS if f.blocker(cfg) is not None]


def markdown_table() -> str:
    """The README's table of variant fields (tests/model/test_variant_fields.py keeps them equal)."""
    rows = ["| field | read by | what it is |", "|---|---|---|"]
    for f in VARIANT_FIELDS:
        used = " and ".join(f"{family} = {' / '.join(f'`{v}`' for v in vs)}" for family, vs in f.needs.items())
        rows.append(f"| `{f.name}` | {used} | {f.what} |")
    return "\n".join(rows)

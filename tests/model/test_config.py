"""TransformerConfig: README defaults, derived fields, validation messages, serialisation."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from model_helpers import ATTNS, FFNS, NORMS, POS, tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.model import TransformerConfig
from transformer_toolkit.model.variant_fields import IgnoredFieldWarning

# ── defaults ───────────────────────────────────────────────────────────────────────────────

README_DEFAULTS = dict(
    vocab_size=32000, dim=512, n_layers=8, n_heads=8, max_seq=2048,
    latent_dim=64,
    ffn="swiglu", n_experts=8, top_k=2, moe_aux_weight=0.01, moe_capacity=1.0, moe_n_shared=2,
    norm="rmsnorm", eps=1e-6,
    pos_enc="rope", rope_theta=10000.0,
    dropout=0.0,
    tie_weights=True,
)


@pytest.mark.parametrize("field,value", sorted(README_DEFAULTS.items()))
def test_readme_defaults(field, value):
    cfg = TransformerConfig()
    assert field in TransformerConfig.model_fields
    got = getattr(cfg, field)
    assert type(got) is type(value)
    assert got == value


def test_default_attention_and_derived_fields():
    cfg = TransformerConfig()
    assert cfg.attn == "mha"
    assert cfg.n_kv_heads == cfg.n_heads == 8
    assert cfg.hidden_dim == 4 * 512 == 2048
    assert cfg.head_dim == 512 // 8 == 64
    assert cfg.is_moe is False


@pytest.mark.parametrize("dim,n_heads", [(48, 4), (64, 2), (96, 6), (40, 5)])
def test_hidden_dim_and_head_dim_derived(dim, n_heads):
    cfg = TransformerConfig(vocab_size=11, dim=dim, n_heads=n_heads, pos_enc="none")
    assert cfg.hidden_dim == 4 * dim
    assert cfg.head_dim == dim // n_heads
    # explicit values are kept
    cfg2 = TransformerConfig(vocab_size=11, dim=dim, n_heads=n_heads, hidden_dim=7, head_dim=4)
    assert cfg2.hidden_dim == 7 and cfg2.head_dim == 4


SEED_BLOCK = dict(  # the seed README's TransformerConfig block, every field as it is there
    vocab_size=32000, dim=512, n_layers=8, n_heads=8, max_seq=2048,
    attn="gqa", n_kv_heads=4, latent_dim=64,
    ffn="swiglu", hidden_dim=2048, n_experts=8, top_k=2, moe_aux_weight=0.01, moe_capacity=1.0,
    moe_n_shared=2, moe_n_routed=6,
    norm="rmsnorm", eps=1e-6, pos_enc="rope", dropout=0.0, tie_weights=True,
)


def test_readme_example_config_builds():
    # swiglu reads none of the MoE fields; all but moe_n_routed hold their defaults there
    with pytest.warns(IgnoredFieldWarning) as rec:
        cfg = TransformerConfig(**SEED_BLOCK)
    assert [str(w.message) for w in rec] == ["moe_n_routed=6 is ignored: ffn='swiglu' does not use it; "
                                             "use ffn='moe_shared'"]
    assert cfg.n_kv_heads == 4 and cfg.attn == "gqa" and cfg.hidden_dim == 2048
    assert cfg.moe_n_routed is None  # recorded as the default: swiglu has no routed experts
    assert TransformerConfig(**SEED_BLOCK | {"ffn": "moe_shared"}).moe_n_routed == 6


@pytest.mark.parametrize("attn", ATTNS)
def test_readme_example_config_builds_for_every_attn(attn):
    cfg = TransformerConfig(**SEED_BLOCK | {"attn": attn, "ffn": "moe_shared"})
    assert cfg.n_kv_heads == {"mha": 8, "gqa": 4, "mqa": 1, "flash": 4, "mla": 8}[attn]
    assert cfg.latent_dim == 64


def test_moe_shared_derives_routed_and_expert_width():
    cfg = TransformerConfig(ffn="moe_shared")
    assert cfg.moe_n_routed == cfg.n_experts - cfg.moe_n_shared == 6
    assert cfg.moe_hidden_dim == cfg.hidden_dim == 2048
    assert cfg.is_moe is True


def test_mla_derives_rope_head_dim():
    cfg = tiny_config(attn="mla")
    assert cfg.rope_head_dim >= 2 and cfg.rope_head_dim % 2 == 0
    assert cfg.n_kv_heads == cfg.n_heads
    assert tiny_config(attn="mla", pos_enc="alibi").rope_head_dim == 0


# ── variant resolution ─────────────────────────────────────────────────────────────────────

def test_mqa_resolves_one_kv_head():
    assert tiny_config(attn="mqa").n_kv_heads == 1
    assert tiny_config(attn="mqa", n_kv_heads=1).n_kv_heads == 1


def test_mha_resolves_kv_heads_to_n_heads():
    assert tiny_config(attn="mha").n_kv_heads == 4
    assert tiny_config(attn="mha", n_heads=6).n_kv_heads == 6
    assert tiny_config(attn="mha", n_kv_heads=4).n_kv_heads == 4


def test_flash_accepts_n_kv_heads():
    assert tiny_config(attn="flash").n_kv_heads == 4
    assert tiny_config(attn="flash", n_kv_heads=2).n_kv_heads == 2
    assert tiny_config(attn="flash", n_kv_heads=1).n_kv_heads == 1
    model = Transformer(tiny_config(attn="flash", n_kv_heads=2))
    assert model.blocks[0].attn.k_proj.out_features == 2 * 12


def test_gqa_keeps_n_kv_heads():
    assert tiny_config(attn="gqa", n_kv_heads=2).n_kv_heads == 2


# ── validation ─────────────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("attn", ["gqa", "flash"])
def test_n_heads_not_divisible_by_n_kv_heads(attn):
    with pytest.raises(ValueError, match="n_heads must be divisible by n_kv_heads") as exc:
        tiny_config(attn=attn, n_kv_heads=3)
    assert "n_kv_heads=3" in str(exc.value)


def test_dim_not_divisible_by_n_heads():
    with pytest.raises(ValueError, match=r"dim \(50\) must be divisible by n_heads \(4\)"):
        TransformerConfig(dim=50, n_heads=4)
    # setting head_dim explicitly is the documented way out
    assert TransformerConfig(dim=50, n_heads=4, head_dim=8).head_dim == 8


@pytest.mark.parametrize("ffn", ["moe", "moe_ec"])
def test_top_k_greater_than_n_experts(ffn):
    with pytest.raises(ValueError, match=r"top_k must be between 1 and n_experts \(4\), got 5"):
        tiny_config(ffn=ffn, n_experts=4, top_k=5)


def test_top_k_zero_rejected():
    with pytest.raises(ValueError, match="top_k"):
        tiny_config(ffn="moe", top_k=0)


def test_top_k_greater_than_routed_for_moe_shared():
    # 4 experts, 3 shared -> 1 routed: top_k=2 impossible
    with pytest.raises(ValueError, match=r"top_k must be between 1 and moe_n_routed \(1\), got 2"):
        tiny_config(ffn="moe_shared", n_experts=4, moe_n_shared=3, top_k=2)


def test_shared_plus_routed_must_equal_n_experts():
    with pytest.raises(ValueError, match=r"moe_n_shared \(2\) \+ moe_n_routed \(5\) must equal n_experts \(8\)"):
        TransformerConfig(ffn="moe_shared", n_experts=8, moe_n_shared=2, moe_n_routed=5)
    ok = TransformerConfig(ffn="moe_shared", n_experts=8, moe_n_shared=2, moe_n_routed=6)
    assert ok.moe_n_routed == 6


@pytest.mark.parametrize("field,bad,close,valid", [
    ("ffn", "swiglue", "swiglu", FFNS),
    ("attn", "gqaa", "gqa", ATTNS),
    ("norm", "rmsnrom", "rmsnorm", NORMS),
    ("pos_enc", "alibi2", "alibi", POS),
])
def test_unknown_variant_lists_valid_and_suggests(field, bad, close, valid):
    with pytest.raises(ValueError, match=f"{field}='{bad}' is not a known variant") as exc:
        TransformerConfig(**{field: bad})
    msg = str(exc.value)
    for name in valid:
        assert name in msg
    assert f"Did you mean '{close}'" in msg


def test_unknown_variant_without_close_match_still_lists_valid():
    with pytest.raises(ValueError, match="attn='zzzzzz' is not a known variant") as exc:
        TransformerConfig(attn="zzzzzz")
    msg = str(exc.value)
    assert all(a in msg for a in ATTNS)
    assert "Did you mean" not in msg


def test_unknown_field_rejected_with_suggestion():
    with pytest.raises(ValueError, match=r"unknown field\(s\): 'n_layer' \(did you mean 'n_layers'\?\)"):
        TransformerConfig(n_layer=4)
    with pytest.raises(ValueError, match=r"'hidden_size'"):
        TransformerConfig.from_dict({"dim": 64, "hidden_size": 128})


def test_gqa_requires_n_kv_heads():
    with pytest.raises(ValueError, match=r"attn='gqa' needs n_kv_heads"):
        TransformerConfig(attn="gqa")


@pytest.mark.parametrize("attn,recorded,why", [
    ("mqa", 1, "has one kv head shared by all query heads"),
    ("mha", 4, "has one kv head per query head"),
    ("mla", 4, "expands its k/v latent to every head"),
])
def test_kv_heads_of_another_variant_are_ignored(attn, recorded, why):
    with pytest.warns(IgnoredFieldWarning) as rec:
        cfg = tiny_config(attn=attn, n_kv_heads=2)
    assert [str(w.message) for w in rec] == [
        f"n_kv_heads=2 is ignored: attn='{attn}' {why}; use attn='gqa' for grouped kv heads"]
    assert cfg.n_kv_heads == recorded
    if attn != "mla":  # the module is built with the recorded count
        assert Transformer(cfg).blocks[0].attn.k_proj.out_features == recorded * cfg.head_dim


@pytest.mark.parametrize("latent", [0, -3])
def test_mla_latent_dim_must_be_positive(latent):
    with pytest.raises(ValueError, match=f"latent_dim must be >= 1 for attn='mla', got {latent}"):
        tiny_config(attn="mla", latent_dim=latent)
    # other attention kinds ignore it and record the default
    with pytest.warns(IgnoredFieldWarning, match=f"latent_dim={latent} is ignored: attn='mha' does not use it"):
        assert tiny_config(attn="mha", latent_dim=latent).latent_dim == 64


@pytest.mark.parametrize("rope_head_dim", [3, 5, 1])
def test_mla_odd_rope_head_dim_rejected(rope_head_dim):
    with pytest.raises(ValueError, match=f"rope_head_dim must be even.*got {rope_head_dim}"):
        tiny_config(attn="mla", rope_head_dim=rope_head_dim)
    assert tiny_config(attn="mla", rope_head_dim=4).rope_head_dim == 4


@pytest.mark.parametrize("p", [1.0, 1.5, -0.1])
def test_dropout_out_of_range(p):
    with pytest.raises(ValueError, match=rf"dropout must be in \[0, 1\), got {p}"):
        tiny_config(dropout=p)


def test_dropout_in_range_accepted():
    assert tiny_config(dropout=0.0).dropout == 0.0
    assert tiny_config(dropout=0.5).dropout == 0.5


@pytest.mark.parametrize("field", ["vocab_size", "dim", "n_layers", "n_heads", "max_seq"])
def test_positive_sizes(field):
    with pytest.raises(ValueError, match=f"{field} must be >= 1"):
        tiny_config(**{field: 0})


def test_rope_needs_even_head_dim():
    with pytest.raises(ValueError, match="even head_dim"):
        TransformerConfig(dim=12, n_heads=4)  # head_dim 3
    assert TransformerConfig(dim=12, n_heads=4, pos_enc="alibi").head_dim == 3


# ── serialisation ──────────────────────────────────────────────────────────────────────────

def _round_trip(cfg: TransformerConfig) -> None:
    d = cfg.to_dict()
    assert isinstance(d, dict) and set(d) == set(TransformerConfig.model_fields)
    back = TransformerConfig.from_dict(d)
    assert back == cfg
    assert back.to_dict() == d
    text = cfg.to_json()
    assert json.loads(text) == d
    assert TransformerConfig.from_json(text) == cfg


@pytest.mark.parametrize("attn", ATTNS)
def test_round_trip_every_attn(attn):
    cfg = tiny_config(attn=attn, tie_weights=False, dropout=0.1, rope_theta=5e5, qkv_bias=True)
    _round_trip(cfg)


@pytest.mark.parametrize("ffn", FFNS)
def test_round_trip_every_ffn(ffn):
    cfg = tiny_config(ffn=ffn, norm="layernorm", pos_enc="learned", moe_aux_weight=0.02)
    _round_trip(cfg)


def test_round_trip_detects_difference():
    a = tiny_config()
    b = TransformerConfig.from_dict({**a.to_dict(), "eps": 1e-5})
    assert a != b


def test_json_file_round_trip(tmp_path):
    cfg = tiny_config(attn="gqa", ffn="moe_shared", pos_enc="alibi", norm="layernorm", eps=1e-5)
    path = tmp_path / "config.json"
    text = cfg.to_json(str(path))
    assert path.read_text(encoding="utf-8").strip() == text.strip()
    assert TransformerConfig.from_json(str(path)) == cfg
    # the leading-whitespace JSON text form also parses
    assert TransformerConfig.from_json("\n  " + text) == cfg


def test_transformer_accepts_config_dict():
    cfg = tiny_config(attn="mqa")
    model = Transformer(cfg.to_dict())
    assert model.cfg == cfg


# ── property-based: valid combinations round-trip and build ────────────────────────────────

@st.composite
def valid_configs(draw):
    attn = draw(st.sampled_from(ATTNS))
    ffn = draw(st.sampled_from(FFNS))
    norm = draw(st.sampled_from(NORMS))
    pos_enc = draw(st.sampled_from(POS))
    n_heads = draw(st.sampled_from([1, 2, 4, 6]))
    head_dim = draw(st.sampled_from([2, 4, 6, 8]))
    kw = dict(
        vocab_size=draw(st.integers(5, 40)), dim=n_heads * head_dim, n_layers=draw(st.integers(1, 2)),
        n_heads=n_heads, max_seq=draw(st.integers(4, 16)), attn=attn, ffn=ffn, norm=norm, pos_enc=pos_enc,
        hidden_dim=draw(st.sampled_from([4, 8, 12])), tie_weights=draw(st.booleans()),
        bias=draw(st.booleans()), qkv_bias=draw(st.booleans()),
        dropout=draw(st.sampled_from([0.0, 0.1])),
    )
    divisors = [d for d in range(1, n_heads + 1) if n_heads % d == 0]
    if attn == "gqa":
        kw["n_kv_heads"] = draw(st.sampled_from(divisors))
    elif attn == "flash":
        kw["n_kv_heads"] = draw(st.sampled_from([None, *divisors]))
    elif attn == "mla":
        kw["latent_dim"] = draw(st.integers(1, 12))
        kw["q_latent_dim"] = draw(st.sampled_from([None, 4]))
        if pos_enc == "rope":
            kw["rope_head_dim"] = draw(st.sampled_from([None, 2, 4]))
    if ffn in ("moe", "moe_ec"):
        n_experts = draw(st.integers(1, 4))
        kw.update(n_experts=n_experts, top_k=draw(st.integers(1, n_experts)))
    elif ffn == "moe_shared":
        n_experts = draw(st.integers(2, 4))
        n_shared = draw(st.integers(0, n_experts - 1))
        kw.update(n_experts=n_experts, moe_n_shared=n_shared, top_k=draw(st.integers(1, n_experts - n_shared)))
    return TransformerConfig(**kw)


@settings(max_examples=25, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=valid_configs(), T=st.integers(1, 4))
def test_valid_configs_round_trip_and_build(cfg, T):
    _round_trip(cfg)
    assert cfg.n_heads % cfg.n_kv_heads == 0
    model = Transformer(cfg).eval()
    assert model.cfg == cfg
    assert (model.head.weight is model.embed.weight) == cfg.tie_weights
    with torch.no_grad():
        logits, aux = model(torch.randint(0, cfg.vocab_size, (2, min(T, cfg.max_seq))))
    assert logits.shape == (2, min(T, cfg.max_seq), cfg.vocab_size)
    assert torch.isfinite(logits).all()
    assert aux.dim() == 0 and math.isfinite(aux.item())
    # a model built from the JSON round-tripped config has the same parameter shapes
    clone = Transformer(TransformerConfig.from_json(cfg.to_json()))
    assert {k: v.shape for k, v in clone.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_positional_arguments_get_a_clear_error():
    with pytest.raises(TypeError, match=r"keyword arguments only, e\.g\. TransformerConfig\(vocab_size=.*`\.\.\.`"):
        TransformerConfig(...)  # the seed README's "same config as training" placeholder, run as is


def test_to_json_file_round_trip_is_atomic(tmp_path):
    cfg = TransformerConfig(vocab_size=100, dim=32, n_layers=1, n_heads=4)
    cfg.to_json(tmp_path / "cfg.json")
    assert TransformerConfig.from_json(tmp_path / "cfg.json") == cfg
    assert [p.name for p in tmp_path.iterdir()] == ["cfg.json"]  # no temp file left behind


def test_gelu_choice_sets_the_activation_of_gelu_ffns_only():
    import torch.nn.functional as F

    from transformer_toolkit.model import Transformer
    from transformer_toolkit.model.ffn import gelu_tanh

    x = torch.randn(3, 5)
    for ffn in ("ffn", "geglu"):
        tanh = Transformer(TransformerConfig(vocab_size=11, dim=8, n_layers=1, n_heads=2, ffn=ffn))
        exact = Transformer(TransformerConfig(vocab_size=11, dim=8, n_layers=1, n_heads=2, ffn=ffn, gelu="exact"))
        assert torch.equal(tanh.blocks[0].ffn.act(x), gelu_tanh(x))
        assert torch.equal(exact.blocks[0].ffn.act(x), F.gelu(x))
        assert not torch.equal(F.gelu(x), gelu_tanh(x))
    swiglu = Transformer(TransformerConfig(vocab_size=11, dim=8, n_layers=1, n_heads=2, gelu="exact"))
    assert torch.equal(swiglu.blocks[0].ffn.act(x), F.silu(x))  # the field leaves other FFNs alone
    with pytest.raises(ValueError, match="gelu"):
        TransformerConfig(gelu="erf")

"""The rule for fields of another variant: accepted, ignored, named in one IgnoredFieldWarning,
recorded as what the variant uses; the table behind it; the README's copy; old checkpoints and
run configs. The sweep over every variant combination is test_variant_sweep.py."""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import pytest
import torch
from model_helpers import tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.cli import config as C
from transformer_toolkit.model import (
    ATTN_KINDS,
    FFN_KINDS,
    NORM_KINDS,
    POS_KINDS,
    IgnoredFieldWarning,
    TransformerConfig,
)
from transformer_toolkit.model.variant_fields import VARIANT_FIELDS, markdown_table
from transformer_toolkit.store.checkpoint import config_diff, load_ckpt

README = Path(__file__).resolve().parents[2] / "README.md"
KINDS = {"attn": ATTN_KINDS, "ffn": FFN_KINDS, "pos_enc": POS_KINDS, "norm": NORM_KINDS}


def ignored_warnings(fn):
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        out = fn()
    return out, [w for w in rec if issubclass(w.category, IgnoredFieldWarning)]


def test_table_names_real_fields_and_variants():
    for f in VARIANT_FIELDS:
        assert f.name in TransformerConfig.model_fields, f.name
        for family, variants in f.needs.items():
            assert set(variants) <= set(KINDS[family]), (f.name, family)
            assert set(f.why) <= set().union(*(set(KINDS[fam]) - set(vs) for fam, vs in f.needs.items())), f.name


def test_readme_holds_the_table():
    assert markdown_table() in README.read_text(encoding="utf-8")


def test_one_warning_names_every_ignored_field_at_the_callers_line():
    cfg, rec = ignored_warnings(lambda: TransformerConfig(
        vocab_size=97, dim=32, n_heads=4, attn="mha", n_kv_heads=2, latent_dim=8, pos_enc="alibi", rope_theta=5e5))
    assert len(rec) == 1 and rec[0].filename == __file__
    lines = str(rec[0].message).splitlines()
    assert lines[0] == "3 fields are ignored:"
    assert [s.strip() for s in lines[1:]] == [
        "n_kv_heads=2 is ignored: attn='mha' has one kv head per query head; use attn='gqa' for grouped kv heads",
        "latent_dim=8 is ignored: attn='mha' does not use it; use attn='mla' for latent attention",
        "rope_theta=500000.0 is ignored: pos_enc='alibi' does not use it; use pos_enc='rope'"]
    assert (cfg.n_kv_heads, cfg.latent_dim, cfg.rope_theta) == (4, 64, 10000.0)


@pytest.mark.parametrize("kw", [
    dict(attn="mha", n_kv_heads=4),  # the value mha records
    dict(attn="mqa", n_kv_heads=1),
    dict(ffn="swiglu", moe_n_shared=2, n_experts=8),  # defaults: nothing changes
    dict(attn="mla", pos_enc="none", rope_head_dim=0),  # what mla without rope records
    dict(attn="gqa", n_kv_heads=2, latent_dim=64),
])
def test_a_value_equal_to_the_recorded_one_is_not_reported(kw):
    cfg, rec = ignored_warnings(lambda: TransformerConfig(vocab_size=97, dim=32, n_heads=4, **kw))
    assert rec == []
    assert all(getattr(cfg, k) == v for k, v in kw.items())


@pytest.mark.parametrize("kw,recorded", [
    (dict(attn="gqa", n_kv_heads=2, latent_dim=0), dict(latent_dim=64)),  # 0 would be wrong for mla
    (dict(ffn="swiglu", n_experts=0, top_k=9), dict(n_experts=8, top_k=2)),
    (dict(ffn="moe", n_experts=4, moe_capacity=-1.0, moe_n_shared=7), dict(moe_capacity=1.0, moe_n_shared=2)),
    (dict(attn="mla", pos_enc="alibi", rope_head_dim=3), dict(rope_head_dim=0)),
    (dict(attn="mla", qkv_bias=True), dict(qkv_bias=False)),
])
def test_an_ignored_value_is_never_checked_against_a_variant_that_does_not_read_it(kw, recorded):
    cfg, rec = ignored_warnings(lambda: TransformerConfig(vocab_size=97, dim=32, n_heads=4, **kw))
    assert len(rec) == 1
    assert all(getattr(cfg, k) == v for k, v in recorded.items())
    Transformer(cfg)


@pytest.mark.parametrize("kw,match", [
    (dict(attn="gqa", n_kv_heads=3), r"n_heads must be divisible by n_kv_heads: n_heads=4, n_kv_heads=3"),
    (dict(attn="flash", n_kv_heads=3), r"n_heads must be divisible by n_kv_heads"),
    (dict(attn="gqa"), r"attn='gqa' needs n_kv_heads"),
    (dict(attn="mla", latent_dim=0), r"latent_dim must be >= 1 for attn='mla'"),
    (dict(attn="mla", rope_head_dim=3), r"rope_head_dim must be even"),
    (dict(ffn="moe", n_experts=2, top_k=3), r"top_k must be between 1 and n_experts \(2\)"),
    (dict(ffn="moe_ec", moe_capacity=0.0), r"moe_capacity must be > 0 for ffn='moe_ec'"),
    (dict(ffn="moe_shared", n_experts=4, moe_n_shared=1, moe_n_routed=2), r"must equal n_experts \(4\)"),
])
def test_a_value_wrong_for_the_chosen_variant_stays_an_error(kw, match):
    with pytest.raises(ValueError, match=match):
        TransformerConfig(vocab_size=97, dim=32, n_heads=4, **kw)


OLD_CONFIG = dict(  # as the previous validation saved it: foreign fields kept as given
    tiny_config().to_dict(), attn="mha", n_kv_heads=4, latent_dim=16, n_experts=4, moe_n_shared=1, qkv_bias=True)


def test_an_old_checkpoint_config_still_loads(tmp_path):
    model = Transformer(tiny_config(qkv_bias=True))
    path = tmp_path / "old.pt"
    torch.save({"model": model.state_dict(), "model_config": OLD_CONFIG}, path)
    loaded, rec = ignored_warnings(lambda: Transformer.from_checkpoint(path))
    assert len(rec) == 1 and re.search(r"latent_dim=16 is ignored.*n_experts=4 is ignored", str(rec[0].message), re.S)
    assert loaded.cfg == model.cfg and loaded.cfg.latent_dim == 64
    want = model.state_dict()
    assert all(torch.equal(t, want[k]) for k, t in loaded.state_dict().items())
    # loading it into today's model of the same architecture reports no config difference
    assert config_diff({"model_config": OLD_CONFIG}, model) == {}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_ckpt(path, Transformer(tiny_config(qkv_bias=True)))
    # a real difference is still reported
    assert set(config_diff({"model_config": {**OLD_CONFIG, "dim": 96}}, model)) == {"dim"}


def test_a_run_config_switches_attention_by_one_override():
    raw = C.merge(C.read_yaml("llama-small"), C.parse_overrides(["--model.attn", "mha"]))
    assert raw["model"]["n_kv_heads"] == 2
    run, rec = ignored_warnings(lambda: C.resolve(raw))
    assert [str(w.message).split(":")[0] for w in rec] == ["n_kv_heads=2 is ignored"]
    assert run["model"].attn == "mha" and run["model"].n_kv_heads == run["model"].n_heads

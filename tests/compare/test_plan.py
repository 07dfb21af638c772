"""The plan of a compare: variants from a list, a grid and sizes; budgets and their steps; the
check that refuses an unknown field before anything trains."""

from __future__ import annotations

import pytest

from transformer_toolkit.compare import Budget, CompareConfig, budget_steps, check_fields, expand, parse_budget
from transformer_toolkit.model import Transformer, TransformerConfig
from transformer_toolkit.trainer.mfu import flops_per_token

KNOWN = {"model": {"attn", "ffn", "dim", "n_kv_heads", "n_heads"}, "train": {"lr", "max_steps", "seed"},
         "data": {"seq_len", "corpus"}}


def test_grid_is_the_product_of_the_axes_in_order():
    vs = expand(vary={"model.attn": ["gqa", "mla"], "model.ffn": ["swiglu", "moe"]})
    assert [v.overrides for v in vs] == [{"model.attn": "gqa", "model.ffn": "swiglu"},
                                         {"model.attn": "gqa", "model.ffn": "moe"},
                                         {"model.attn": "mla", "model.ffn": "swiglu"},
                                         {"model.attn": "mla", "model.ffn": "moe"}]
    assert [v.name for v in vs] == ["attn=gqa, ffn=swiglu", "attn=gqa, ffn=moe", "attn=mla, ffn=swiglu",
                                    "attn=mla, ffn=moe"]
    assert len({v.slug for v in vs}) == 4 and all("/" not in v.slug and " " not in v.slug for v in vs)


def test_yaml_variants_nested_or_dotted_named_or_not_times_the_grid():
    listed = [{"name": "wide", "model": {"dim": 64}}, {"model.attn": "mqa"}]
    vs = expand(variants=listed, vary={"train.lr": [1e-3, 3e-3]})
    assert [v.name for v in vs] == ["wide, lr=0.001", "wide, lr=0.003", "attn=mqa, lr=0.001", "attn=mqa, lr=0.003"]
    assert vs[0].overrides == {"model.dim": 64, "train.lr": 1e-3}
    assert [v.name for v in expand()] == ["base"]  # no variants: the base config alone
    with pytest.raises(ValueError, match="both named 'x'"):
        expand(variants=[{"name": "x", "model.dim": 32}, {"name": "x", "model.dim": 64}])
    with pytest.raises(ValueError, match=r"variants\[0\] must be a mapping"):
        expand(variants=["model.attn=mla"])


def test_sizes_and_a_dim_grid_of_three_make_families():
    vs = expand(vary={"model.attn": ["gqa", "mla"]}, sizes=[32, {"model.dim": 64, "model.n_heads": 4}])
    assert [(v.family, v.size) for v in vs] == [("attn=gqa", {"model.dim": 32}),
                                                ("attn=gqa", {"model.dim": 64, "model.n_heads": 4}),
                                                ("attn=mla", {"model.dim": 32}),
                                                ("attn=mla", {"model.dim": 64, "model.n_heads": 4})]
    grid = expand(vary={"model.dim": [16, 32, 64], "model.ffn": ["swiglu", "moe"]})
    assert {v.family for v in grid} == {"ffn=swiglu", "ffn=moe"} and all(v.size for v in grid)
    assert not any(v.size for v in expand(vary={"model.dim": [16, 32]}))  # two values: an ordinary axis


def test_budget_parsing():
    assert parse_budget("tokens=2M") == Budget("tokens", 2e6)
    assert parse_budget("flops=1.5e15") == Budget("flops", 1.5e15)
    assert parse_budget("time=10m") == Budget("time", 600) and parse_budget("time=90") == Budget("time", 90)
    assert parse_budget("steps=1_000") == Budget("steps", 1000)
    for bad, msg in (("tokens", "KIND=VALUE"), ("bytes=5", "KIND one of"), ("tokens=lots", "not a number"),
                     ("time=5y", "suffixes: s, m or h"), ("flops=0", "must be > 0")):
        with pytest.raises(ValueError, match=msg):
            parse_budget(bad)
    with pytest.raises(ValueError, match="compare.seeds must be >= 1"):
        CompareConfig(seeds=0)
    with pytest.raises(ValueError, match="did you mean 'seeds'"):
        CompareConfig(sedes=2)


def test_tokens_budget_gives_the_steps_that_fit():
    assert budget_steps(Budget("tokens", 10_000), tokens_per_step=1024, flops_per_token=1.0) == 9
    assert budget_steps(Budget("tokens", 100), tokens_per_step=1024, flops_per_token=1.0) == 1  # at least one
    assert budget_steps(Budget("time", 60), 1024, 1.0) is None  # the clock decides


def test_flops_budget_counts_active_experts_only():
    """Same FLOPs budget: an MoE with top-2 of 4 experts half as wide as a dense FFN does the work
    of the dense model per token, so it gets the same steps, though it holds twice the FFN weights."""
    common = dict(vocab_size=128, dim=32, n_layers=1, n_heads=2, max_seq=16)
    dense = Transformer(TransformerConfig(**common, ffn="swiglu", hidden_dim=64))
    moe = Transformer(TransformerConfig(**common, ffn="moe", n_experts=4, top_k=2, moe_hidden_dim=32))
    assert sum(p.numel() for p in moe.parameters()) > sum(p.numel() for p in dense.parameters())
    f_dense, f_moe = flops_per_token(dense, 16), flops_per_token(moe, 16)
    router = 32 * 4  # the router's weights are the only extra work
    assert f_moe == pytest.approx(f_dense + 6 * router)
    budget = Budget("flops", 1000 * f_dense * 256)
    assert budget_steps(budget, 256, f_dense) == 1000
    assert budget_steps(budget, 256, f_moe) == int(1000 * f_dense // f_moe)
    top4 = Transformer(TransformerConfig(**common, ffn="moe", n_experts=4, top_k=4, moe_hidden_dim=32))
    f_top4 = flops_per_token(top4, 16)
    assert f_top4 == pytest.approx(f_moe + 6 * 2 * (3 * 32 * 32))  # two more experts of 3 x dim x 32 each
    assert budget_steps(budget, 256, f_top4) == int(1000 * f_dense // f_top4) < 750


def test_unknown_field_and_shared_data_are_refused_naming_the_variant():
    v = expand(variants=[{"name": "mine", "model.atn": "mla"}])[0]
    with pytest.raises(ValueError, match=r"variant 'mine': unknown field 'model.atn' \(did you mean 'attn'\?\)"):
        check_fields(v, KNOWN)
    with pytest.raises(ValueError, match=r"'modle.attn' names no config section \(did you mean 'model'\?\)"):
        check_fields(expand(variants=[{"modle.attn": "mla"}])[0], KNOWN)
    with pytest.raises(ValueError, match="same tokenised data"):
        check_fields(expand(variants=[{"data.corpus": "x.txt"}])[0], KNOWN)
    with pytest.raises(ValueError, match="the budget decides"):
        check_fields(expand(variants=[{"train.max_steps": 5}])[0], KNOWN)
    with pytest.raises(ValueError, match="from the same seeds"):
        check_fields(expand(variants=[{"train.seed": 7}])[0], KNOWN)
    check_fields(expand(variants=[{"model.attn": "gqa", "model.n_kv_heads": 1, "data.seq_len": 8}])[0], KNOWN)

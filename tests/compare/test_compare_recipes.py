"""The shipped compare recipes: every variant passes the plan's checks and builds, at the sizes
the recipes promise (compare-ffn: the same active FFN parameters per token in every variant)."""

from __future__ import annotations

import argparse
import warnings

import pytest

from transformer_toolkit.cli import config as C
from transformer_toolkit.cli.compare import plan
from transformer_toolkit.compare.measure import kv_bytes_per_token, parameters
from transformer_toolkit.model import Transformer

NO_OPTIONS = argparse.Namespace(config=None, vary=None, budget=None, seeds=None, tasks=None)


def models(recipe: str) -> dict:
    raw, s, variants, run, budget = plan(argparse.Namespace(**{**vars(NO_OPTIONS), "config": recipe}), {})
    assert budget.kind == "tokens" and s.seeds >= 1
    vocab = int(run["extras"]["vocab_size"])
    out = {}
    for v in variants:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # fields of the base a variant does not read
            cfg = C.model_config(C.resolve(C.merge(raw, v.overrides), "train"), vocab)
        out[v.name] = Transformer(cfg)
    return out


def test_compare_attention_recipe_builds_four_attention_kinds():
    built = models("compare-attention")
    assert list(built) == ["mha", "gqa", "mqa", "mla"]
    assert [m.cfg.attn for m in built.values()] == ["mha", "gqa", "mqa", "mla"]
    kv = {name: kv_bytes_per_token(m) for name, m in built.items()}
    assert kv["mha"] > kv["gqa"] > kv["mqa"] and kv["mla"] < kv["mha"]  # what the comparison is about


def test_compare_ffn_recipe_matches_active_ffn_parameters():
    built = models("compare-ffn")
    assert list(built) == ["swiglu", "geglu", "moe", "moe_shared"]
    totals = {name: parameters(m) for name, m in built.items()}
    routers = {name: sum(p.numel() for n, p in m.named_parameters() if "router" in n or "gate." in n)
               for name, m in built.items()}
    dense_active = totals["swiglu"][1]
    assert totals["geglu"][1] == dense_active
    for name in ("moe", "moe_shared"):
        total, active = totals[name]
        assert total > dense_active  # more weights in all...
        assert active - routers[name] == pytest.approx(dense_active, rel=1e-9)  # ...the same work per token

"""generate(..., compile=True): the torch.compile'd decode step gives the eager step's tokens.

Each compile costs a few seconds on 2 cores, so the variants here are the ones whose decode
step differs in kind (attention, positions, FFN, norm). Every attention x position x FFN
combination was checked the same way by hand (35 models, tokens identical).
"""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from model_helpers import tiny_config

from transformer_toolkit import generation
from transformer_toolkit.model import Transformer
from transformer_toolkit.model import fast_decode as fd
from transformer_toolkit.model.kernels import Linear, _one_query, decode_kernels


def _model(**kw) -> Transformer:
    torch.manual_seed(0)
    return Transformer(tiny_config(**kw)).eval()


VARIANTS = {  # each a different decode step: attention kind, positions, FFN kind, norm
    "gqa-rope": dict(attn="gqa"),
    "mla": dict(attn="mla"),
    "mha-alibi": dict(attn="mha", pos_enc="alibi"),
    "mqa-sinusoidal": dict(attn="mqa", pos_enc="sinusoidal"),
    "gpt2-style": dict(attn="mha", pos_enc="learned", ffn="ffn", norm="layernorm", bias=True),
    "moe": dict(attn="gqa", ffn="moe"),
    "moe_shared": dict(attn="gqa", ffn="moe_shared"),
}


@pytest.mark.parametrize("kw", list(VARIANTS.values()), ids=list(VARIANTS))
def test_compiled_generate_equals_eager(kw):
    model = _model(**kw)
    x = torch.randint(0, 97, (2, 5), generator=torch.Generator().manual_seed(1))
    eager = model.generate(x, 20, temperature=0)
    compiled = model.generate(x, 20, temperature=0, compile=True)
    assert torch.equal(compiled, eager)
    # past max_seq (32): the window slides and the cache is refilled by an eager prefill
    assert torch.equal(model.generate(x, 40, temperature=0, compile=True), model.generate(x, 40, temperature=0))


def test_compiled_step_logits_match_the_eager_step():
    model = _model(attn="gqa")
    x = torch.randint(0, 97, (1, 6), generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        cache = model.make_cache(1, max_len=32)
        step = generation.CompiledStep(model, cache, 1, torch.device("cpu"))
        model(x, cache=cache, start_pos=0)
        got = step(torch.tensor([[7]]), 6)[:, -1].clone()
        ref_full, _ = model(torch.cat([x, torch.tensor([[7]])], dim=1))
    torch.testing.assert_close(got, ref_full[:, -1], atol=1e-4, rtol=1e-4)


def test_a_second_call_reuses_the_compiled_step():
    model = _model(attn="gqa")
    x = torch.randint(0, 97, (1, 4))
    model.generate(x, 10, temperature=0, compile=True)
    compiled = generation.CompiledStep._compiled["default"]
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out = model.generate(x, 12, temperature=0.8, top_k=5, compile=True)  # same cache length bucket
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before
    assert generation.CompiledStep._compiled["default"] is compiled
    assert out.shape == (1, 16)


def test_later_steps_run_the_compiled_graph_without_setting_the_kernels(monkeypatch):
    model = _model(attn="gqa")
    x = torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(4))
    eager = model.generate(x, 12, temperature=0)
    model.generate(x, 12, temperature=0, compile=True)  # compiles this model's step
    entered = []
    real = generation.decode_kernels

    def counting(m, compiled=False):
        entered.append(compiled)
        return real(m, compiled)

    monkeypatch.setattr(generation, "decode_kernels", counting)
    before = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    out = model.generate(x, 12, temperature=0, compile=True)
    assert torch.equal(out, eager)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == before  # no new trace
    # the step's first call (at its creation, guards checked) sets the compiled decode kernels;
    # the 11 decode steps after it replay the graph
    assert entered == [True] * (1 if generation._CAN_SKIP_GUARDS else 12)


def test_prompt_cache_with_a_compiled_step():
    """The compiled step writes slot 0 when it is created: the reused prefix is copied in after."""
    model = _model(attn="gqa", init_std=0.1, tie_weights=False)  # logits that a wrong key would move
    with torch.no_grad():
        model.head.weight.mul_(10.0)
    pc = generation.PromptCache()
    x = torch.randint(0, 97, (1, 5), generator=torch.Generator().manual_seed(5))
    first = model.generate(x, 6, temperature=0, compile=True, prompt_cache=pc)
    turn = torch.cat([first, torch.randint(0, 97, (1, 4), generator=torch.Generator().manual_seed(6))], dim=1)
    second = model.generate(turn, 8, temperature=0, compile=True, prompt_cache=pc)
    assert pc.reused == 10
    assert torch.equal(second, model.generate(turn, 8, temperature=0))


def test_stop_ids_and_streaming_with_compile():
    model = _model(attn="gqa")
    x = torch.randint(0, 97, (2, 4), generator=torch.Generator().manual_seed(3))
    eager = model.generate(x, 15, temperature=0)
    stop = int(eager[0, 7])  # a token row 0 produces greedily
    ref = model.generate(x, 15, temperature=0, stop_ids=[stop])
    assert torch.equal(model.generate(x, 15, temperature=0, stop_ids=[stop], compile=True), ref)
    streamed = torch.stack(list(model.stream(x, 15, temperature=0, compile=True)), dim=1)
    assert torch.equal(streamed, eager[:, 4:])


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch):
    model = _model(attn="gqa")
    x = torch.randint(0, 97, (1, 4))

    def broken(*args, **kwargs):
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(generation.CompiledStep, "_compiled", {})
    monkeypatch.setattr(torch, "compile", broken)
    with pytest.warns(UserWarning, match="no C\\+\\+ compiler found"):
        out = model.generate(x, 8, temperature=0, compile=True)
    assert torch.equal(out, model.generate(x, 8, temperature=0))


def test_compiled_cache_len_is_a_power_of_two_within_max_seq():
    assert generation.compiled_cache_len(5, 512) == 64
    assert generation.compiled_cache_len(64, 512) == 64
    assert generation.compiled_cache_len(65, 512) == 128
    assert generation.compiled_cache_len(272, 512) == 512
    assert generation.compiled_cache_len(300, 300) == 300
    assert generation.compiled_cache_len(20, 32) == 32


def test_rowdot_linears_match_f_linear_and_are_removed():
    lin = Linear(24, 40, bias=True)
    model = nn.Sequential(lin)
    small, big = torch.randn(2, 24), torch.randn(fd.ROWDOT_MAX_ROWS[torch.float32] + 1, 24)
    with decode_kernels(model, compiled=True):
        assert lin.kernel is fd.rowdot
        torch.testing.assert_close(lin(small), F.linear(small, lin.weight, lin.bias), atol=1e-5, rtol=1e-5)
        assert torch.equal(lin(big), F.linear(big, lin.weight, lin.bias))  # more rows: the ordinary kernel
        bf = lin.to(torch.bfloat16)
        got = bf(small.bfloat16()).float()
        torch.testing.assert_close(got, F.linear(small.bfloat16(), bf.weight, bf.bias).float(), atol=3e-2, rtol=3e-2)
    assert lin.kernel is None and "forward" not in lin.__dict__  # nothing patched, nothing left set


@pytest.mark.parametrize("heads,kv", [(6, 3), (4, 4), (8, 1)])
@pytest.mark.parametrize("mask_kind", ["none", "bool", "additive"])
def test_one_query_attention_equals_sdpa(heads, kv, mask_kind):
    g = torch.Generator().manual_seed(heads * 10 + kv)
    q = torch.randn(2, heads, 1, 16, generator=g)
    k, v = torch.randn(2, kv, 10, 16, generator=g), torch.randn(2, kv, 10, 16, generator=g)
    mask = {"none": None, "bool": torch.arange(10)[None, :] <= 6,
            "additive": torch.randn(1, heads, 1, 10, generator=g)}[mask_kind]
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
    torch.testing.assert_close(_one_query(q, k, v, mask, None), ref, atol=1e-5, rtol=1e-5)
    if mask_kind == "bool":  # the masked keys really are ignored
        k2 = k.clone()
        k2[:, :, 7:] = 1e3
        torch.testing.assert_close(_one_query(q, k2, v, mask, None), ref, atol=1e-5, rtol=1e-5)


def test_past_the_recompile_limit_decoding_stays_correct(monkeypatch):
    """When dynamo may not compile another variant it runs the step uncompiled; the calls
    that skip guard checks must then notice and keep running it that way."""
    monkeypatch.setattr(generation, "RECOMPILE_LIMIT", 0)
    torch.manual_seed(0)
    model = Transformer(tiny_config(attn="gqa", dim=40, n_heads=5, n_kv_heads=1)).eval()  # a new structure
    x = torch.randint(0, 97, (1, 4))
    assert torch.equal(model.generate(x, 12, temperature=0, compile=True), model.generate(x, 12, temperature=0))

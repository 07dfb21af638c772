"""Every architecture variant trains: gradients reach every parameter and a toy pattern is
learned. Plus flash vs mha, MLA's compressed cache, ALiBi and RoPE details."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from model_helpers import ATTN_X_POS, ATTNS, FFNS, NORMS, POS, tiny_config
from torch.nn.attention import SDPBackend, sdpa_kernel

from transformer_toolkit import Transformer
from transformer_toolkit.model.position import RotaryEmbedding, alibi_bias, alibi_slopes


def loss_of(model: Transformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, aux = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + aux


def assert_all_grads(model: Transformer) -> None:
    for name, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient"


def check_backward(cfg) -> Transformer:
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 16))
    loss = loss_of(model, x[:, :-1], x[:, 1:])
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert_all_grads(model)
    return model


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("ffn", FFNS)
def test_backward_every_ffn_and_norm(ffn, norm):
    model = check_backward(tiny_config(ffn=ffn, norm=norm))
    if ffn in ("moe", "moe_shared"):
        # each expert slice that received tokens has a gradient, and some expert did
        experts = model.blocks[0].ffn.experts if ffn == "moe" else model.blocks[0].ffn.routed.experts
        per_expert = experts.gate_proj.grad.abs().sum(dim=(1, 2))
        assert (per_expert > 0).sum() >= 2
    if ffn == "moe_ec":
        # expert choice: every expert takes C tokens of every sequence, so all experts train
        per_expert = model.blocks[0].ffn.experts.down_proj.grad.abs().sum(dim=(1, 2))
        assert (per_expert > 0).all()


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_backward_every_attn_and_pos(attn, pos):
    check_backward(tiny_config(attn=attn, pos_enc=pos))


# every variant learns -----------------------------------------------------------------------------

LEARN_CASES = [  # covers every attn, pos_enc, ffn and norm at least once
    ("mha", "rope", "swiglu", "rmsnorm"),
    ("gqa", "alibi", "ffn", "layernorm"),
    ("mqa", "sinusoidal", "relu_ffn", "rmsnorm"),
    ("flash", "learned", "glu", "layernorm"),
    ("mla", "rope", "moe", "rmsnorm"),
    ("mla", "none", "reglu", "layernorm"),
    ("gqa", "rope", "geglu", "rmsnorm"),
    ("mha", "learned", "moe_ec", "rmsnorm"),
    ("mqa", "alibi", "moe_shared", "layernorm"),
]


def test_learn_cases_cover_every_variant():
    for i, kinds in enumerate((ATTNS, POS, FFNS, NORMS)):
        assert {case[i] for case in LEARN_CASES} == set(kinds)


@pytest.mark.parametrize("attn,pos,ffn,norm", LEARN_CASES)
def test_variant_learns_repeating_pattern(attn, pos, ffn, norm):
    torch.manual_seed(0)
    cfg = tiny_config(attn=attn, pos_enc=pos, ffn=ffn, norm=norm, dim=32, n_layers=2, n_heads=4,
                      hidden_dim=64, latent_dim=16)
    model = Transformer(cfg)
    pattern = torch.arange(1, 17).repeat(4)  # 1..16 repeated
    data = torch.stack([pattern[s:s + 33] for s in range(0, 16, 2)])  # seq 32, each row 2 periods
    x, y = data[:, :-1], data[:, 1:]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    with torch.no_grad():
        initial = loss_of(model, x, y).item()
    for _ in range(60):
        opt.zero_grad()
        loss = loss_of(model, x, y)
        loss.backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        final = loss_of(model, x, y).item()
        logits, _ = model(x)
    assert final < 0.4 * initial, (initial, final)
    acc = (logits.argmax(-1) == y).float().mean().item()
    assert acc > 0.9, acc


# flash ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos", POS)
def test_flash_equals_mha(pos):
    mha = Transformer(tiny_config(attn="mha", pos_enc=pos))
    flash = Transformer(tiny_config(attn="flash", pos_enc=pos))
    flash.load_state_dict(mha.state_dict())
    x = torch.randint(0, 97, (2, 20))
    with torch.no_grad():
        a, _ = mha(x)
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]):
            b, _ = flash(x)
            cache = flash.make_cache(2)
            c1, _ = flash(x[:, :9], cache=cache, start_pos=0)
            c2, _ = flash(x[:, 9:10], cache=cache, start_pos=9)
            c3, _ = flash(x[:, 10:], cache=cache, start_pos=10)
    torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.cat([c1, c2, c3], 1), a, atol=1e-5, rtol=1e-5)
    loss_of(flash, x[:, :-1], x[:, 1:]).backward()
    assert_all_grads(flash)
    assert torch.equal(flash.generate(x[:, :5], 30, temperature=0), mha.generate(x[:, :5], 30, temperature=0))


def test_flash_restricts_sdpa_backends(monkeypatch):
    """flash runs SDPA with the unfused math kernel disabled; mha leaves it enabled (inference:
    CPU training of short sequences takes mha to _matmul_attention, never flash)."""
    seen = []
    real = F.scaled_dot_product_attention

    def spy(*args, **kwargs):
        seen.append(torch.backends.cuda.math_sdp_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", spy)
    x = torch.randint(0, 97, (1, 8))
    for attn, want in (("flash", False), ("mha", True)):
        seen.clear()
        with torch.no_grad():
            Transformer(tiny_config(attn=attn))(x)
        assert seen == [want] * 2, (attn, seen)


# MLA --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("pos", ["rope", "none"])
def test_mla_cache_holds_latent_and_rope_key(pos):
    cfg = tiny_config(attn="mla", pos_enc=pos)
    model = Transformer(cfg)
    r = cfg.rope_head_dim
    assert (r > 0) == (pos == "rope")
    cache = model.make_cache(3, max_len=20)
    assert len(cache) == cfg.n_layers
    for layer in cache:
        assert [tuple(b.shape) for b in layer.buffers] == [(3, 20, cfg.latent_dim), (3, 20, r)]
        assert layer.bytes_per_token() == 3 * (cfg.latent_dim + r) * 4
    mha = Transformer(tiny_config(attn="mha", pos_enc=pos)).make_cache(3, max_len=20)
    assert mha[0].bytes_per_token() == 3 * 2 * cfg.n_heads * cfg.head_dim * 4
    assert cache[0].bytes_per_token() < mha[0].bytes_per_token()


@pytest.mark.parametrize("pos", ["rope", "none"])
@pytest.mark.parametrize("T,start", [(6, 0), (1, 9), (4, 6)])
def test_mla_absorbed_equals_expanded(pos, T, start):
    model = Transformer(tiny_config(attn="mla", pos_enc=pos, init_std=0.2))
    attn = model.blocks[0].attn
    B, H, hd, r, L = 2, attn.n_heads, attn.head_dim, attn.rope_dim, attn.latent_dim
    S = start + T
    ctx = model._context(T, start, torch.device("cpu"))
    q_nope, q_rope = torch.randn(B, H, T, hd), torch.randn(B, H, T, r)
    c, k_rope = torch.randn(B, S, L), torch.randn(B, S, r)
    with torch.no_grad():
        a = attn._absorbed(q_nope, q_rope, c, k_rope, ctx)
        e = attn._expanded(q_nope, q_rope, c, k_rope, ctx)
    assert a.shape == e.shape == (B, H, T, hd)
    torch.testing.assert_close(a, e, atol=1e-5, rtol=1e-4)


def test_mla_cached_equals_uncached():
    model = Transformer(tiny_config(attn="mla", init_std=0.2)).eval()
    x = torch.randint(0, 97, (2, 14))
    with torch.no_grad():
        full, _ = model(x)
        cache = model.make_cache(2)
        parts = [model(x[:, :8], cache=cache, start_pos=0)[0]]
        parts += [model(x[:, t:t + 1], cache=cache, start_pos=t)[0] for t in range(8, 14)]
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-4, rtol=1e-4)


# ALiBi ------------------------------------------------------------------------------------------

def test_alibi_slopes():
    assert torch.allclose(alibi_slopes(8), torch.tensor([2.0 ** -i for i in range(1, 9)]))
    assert torch.allclose(alibi_slopes(4), torch.tensor([2.0 ** -i for i in (2, 4, 6, 8)]))
    # non-power of two (the paper's reference code): 4-head slopes + every other 8-head slope
    assert torch.allclose(alibi_slopes(6), torch.tensor([2.0 ** -i for i in (2, 4, 6, 8, 1, 3)]))


def test_alibi_bias_is_a_distance_penalty():
    slopes = alibi_slopes(8)
    for h, i in itertools.product((0, 3, 7), (0, 5, 11)):
        bias = alibi_bias(slopes[h:h + 1], torch.tensor([i]), torch.arange(i + 1))[0, 0]  # keys 0..i
        want = -slopes[h] * (i - torch.arange(i + 1)).float()
        torch.testing.assert_close(bias, want)
        assert (bias <= 0).all() and bias[i] == 0
        # strictly more negative the further back the key is
        assert (bias[1:] > bias[:-1]).all()


def test_alibi_model_mask():
    model = Transformer(tiny_config(pos_enc="alibi", n_heads=8, dim=64))
    T, start = 3, 5
    ctx = model._context(T, start, torch.device("cpu"))
    mask = ctx.mask[0]  # (H, T, S)
    slopes = alibi_slopes(8)
    for h in range(8):
        for qi in range(T):
            i = start + qi
            for j in range(start + T):
                v = mask[h, qi, j].item()
                if j > i:
                    assert v == float("-inf")
                else:
                    assert v == pytest.approx(-slopes[h].item() * (i - j), abs=1e-6)


# RoPE / bf16 -----------------------------------------------------------------------------------

@pytest.mark.parametrize("attn", ["mha", "mla"])
def test_rope_tables_stay_float32_in_bf16(attn):
    model = Transformer(tiny_config(attn=attn, pos_enc="rope"))
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        ref, _ = model(x)
    model = model.to(torch.bfloat16)
    assert model.embed.weight.dtype == torch.bfloat16
    assert model.rope.cos.dtype == model.rope.sin.dtype == torch.float32
    fresh = RotaryEmbedding(model.rope.rot_dim, model.cfg.max_seq)
    assert torch.equal(model.rope.cos, fresh.cos) and torch.equal(model.rope.sin, fresh.sin)
    with torch.no_grad():
        logits, _ = model(x)
        cache = model.make_cache(2)
        assert cache[0].buffers[0].dtype == torch.bfloat16
        step, _ = model(x[:, :1], cache=cache, start_pos=0)
    assert logits.dtype == torch.bfloat16 and torch.isfinite(logits).all()
    err = (logits.float() - ref).abs().max().item()
    assert err < 0.1 * ref.abs().max().item() + 0.02, err
    out = model.generate(x[:, :4], 5, temperature=0)
    assert out.shape == (2, 9)

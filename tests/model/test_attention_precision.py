"""Which attention kernel CPU training and inference run, and in which dtype: short training
sequences go to ``_matmul_attention`` (``attn="flash"`` excepted), the fused kernel runs the
rest, in fp32 for short bf16 training blocks and for half-precision decode steps; results keep
the caller's dtype."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import spy_dtypes, tiny_config

from transformer_toolkit.model import Transformer
from transformer_toolkit.model import kernels as A


@pytest.mark.parametrize("attn", ["mha", "gqa", "flash", "mla"])
@pytest.mark.parametrize("pos", ["rope", "alibi"])
def test_bf16_autocast_training_matches_fp32(attn, pos):
    model = Transformer(tiny_config(attn=attn, pos_enc=pos))
    x = torch.randint(0, 97, (2, 16))
    ref, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out, _ = model(x)
    assert out.dtype == torch.bfloat16
    torch.testing.assert_close(out.float(), ref, atol=0.05, rtol=0.05)
    out.float().square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads if g is not None)
    assert sum(g.abs().sum() for g in grads if g is not None) > 0


def _spy_matmul_attention(monkeypatch) -> list:
    seen = []
    real = A._matmul_attention

    def spy(q, *args):
        seen.append(q.dtype)
        return real(q, *args)

    monkeypatch.setattr(A, "_matmul_attention", spy)
    return seen


def test_short_training_sequences_take_the_matmul_kernel_and_inference_the_fused_one(monkeypatch):
    fused = spy_dtypes(monkeypatch, F, "scaled_dot_product_attention")
    matmul = _spy_matmul_attention(monkeypatch)
    model = Transformer(tiny_config())
    x = torch.randint(0, 97, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        assert matmul == [torch.bfloat16] * 2 and fused == []  # training: both layers, in bf16
        matmul.clear()
        with torch.no_grad():
            model(x)
    assert matmul == [] and set(fused) == {torch.bfloat16}  # inference keeps the fused kernel
    fused.clear()
    model(x)  # fp32 training
    assert matmul == [torch.float32] * 2 and fused == []


def test_flash_never_takes_the_matmul_kernel_and_runs_short_bf16_training_in_fp32(monkeypatch):
    fused = spy_dtypes(monkeypatch, F, "scaled_dot_product_attention")
    matmul = _spy_matmul_attention(monkeypatch)
    model = Transformer(tiny_config(attn="flash"))
    x = torch.randint(0, 97, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        assert set(fused) == {torch.float32}
        fused.clear()
        with torch.no_grad():
            model(x)
    assert set(fused) == {torch.bfloat16} and matmul == []


def test_kernel_choice_by_sequence_length(monkeypatch):
    def train_q(T, d):
        return torch.zeros(1, 2, T, d, dtype=torch.bfloat16, requires_grad=True)

    assert A._fp32_pays(train_q(128, 64)) and not A._fp32_pays(train_q(256, 64))
    assert A._fp32_pays(train_q(512, 32)) and not A._fp32_pays(train_q(1024, 32))
    fused = spy_dtypes(monkeypatch, F, "scaled_dot_product_attention")
    matmul = _spy_matmul_attention(monkeypatch)
    model = Transformer(tiny_config(dim=128, n_heads=2, max_seq=1024))  # head_dim 64
    lim16, lim32 = A.MATMUL_ATTENTION_MAX_KEYS[torch.bfloat16], A.MATMUL_ATTENTION_MAX_KEYS[torch.float32]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 97, (1, lim16)))
        assert len(matmul) == 2 and fused == []
        matmul.clear()
        model(torch.randint(0, 97, (1, lim16 + 1)))
        assert matmul == [] and set(fused) == {torch.bfloat16}  # long: the fused kernel in bf16
    fused.clear()
    model(torch.randint(0, 97, (1, lim32)))
    assert len(matmul) == 2 and fused == []
    matmul.clear()
    model(torch.randint(0, 97, (1, lim32 + 1)))
    assert matmul == [] and set(fused) == {torch.float32}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("attn", ["gqa", "flash", "mla"])
def test_half_precision_decode_steps_run_the_fused_kernel_in_fp32(monkeypatch, dtype, attn):
    fused = spy_dtypes(monkeypatch, F, "scaled_dot_product_attention")
    torch.manual_seed(0)
    model = Transformer(tiny_config(attn=attn)).eval()
    x = torch.randint(0, 97, (2, 7))
    with torch.no_grad():
        ref = model(x)[0][:, -1]  # fp32 model, full forward
        model.to(dtype)
        fused.clear()
        cache = model.make_cache(2)
        model(x[:, :6], cache=cache)
        assert set(fused) == {dtype}  # the prompt (6 queries): the half-precision kernel
        fused.clear()
        step = model(x[:, 6:], cache=cache, start_pos=6)[0][:, -1]
    assert set(fused) == {torch.float32} and step.dtype == dtype  # one query: fp32, cast back
    torch.testing.assert_close(step.float(), ref, atol=0.05, rtol=0.05)


def test_single_query_kernel_choice():
    def q(T, dtype, grad=False):
        return torch.zeros(1, 2, T, 16, dtype=dtype, requires_grad=grad)

    assert A._fp32_pays(q(1, torch.bfloat16)) and A._fp32_pays(q(1, torch.float16))
    assert not A._fp32_pays(q(1, torch.float32)) and not A._fp32_pays(q(2, torch.bfloat16))
    assert not A._fp32_pays(q(4, torch.float16, grad=True))  # fp16 training keeps its kernel

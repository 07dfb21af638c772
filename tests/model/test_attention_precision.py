"""CPU bf16 training runs the attention of short sequences in fp32 (faster backward there) and
of long ones in bf16; results stay bf16-typed."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from model_helpers import spy_dtypes, tiny_config

from transformer_toolkit.model import Transformer


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


def test_the_attention_kernel_sees_fp32_when_training_and_bf16_when_not(monkeypatch):
    seen = spy_dtypes(monkeypatch, F, "scaled_dot_product_attention")
    model = Transformer(tiny_config())
    x = torch.randint(0, 97, (2, 8))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(x)
        assert set(seen) == {torch.float32}
        seen.clear()
        with torch.no_grad():
            model(x)
    assert set(seen) == {torch.bfloat16}  # inference keeps bf16 (no backward to speed up)


def test_long_sequences_keep_bf16_attention_in_training(monkeypatch):
    from transformer_toolkit.model.attention import _fp32_pays

    assert _fp32_pays(128, 64) and not _fp32_pays(256, 64)
    assert _fp32_pays(512, 32) and not _fp32_pays(1024, 32)
    seen = spy_dtypes(monkeypatch, F, "scaled_dot_product_attention")
    model = Transformer(tiny_config(dim=128, n_heads=2, max_seq=256))  # head_dim 64
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(torch.randint(0, 97, (1, 256)))
        assert set(seen) == {torch.bfloat16}
        seen.clear()
        model(torch.randint(0, 97, (1, 128)))
        assert set(seen) == {torch.float32}

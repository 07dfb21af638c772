"""The tensor-position decode step (the form a CUDA graph captures) equals the ordinary one.

The CUDA graph itself only exists on a GPU (tests/gpu/); what it replays is this step, and
this runs everywhere: every attention kind and positional encoding, dense and MoE.
"""

from __future__ import annotations

import pytest
import torch
from model_helpers import ATTN_X_POS, tiny_config

from transformer_toolkit.model import Transformer


def _decode_both(cfg, prompt_len=5, steps=6):
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    tokens = torch.randint(0, cfg.vocab_size, (2, prompt_len + steps))
    full, _ = model(tokens)
    outs = {}
    for mode in ("int", "tensor"):
        cache = model.make_cache(2)
        model(tokens[:, :prompt_len], cache=cache, start_pos=0)
        rows = []
        for t in range(prompt_len, prompt_len + steps):
            pos = torch.tensor([t]) if mode == "tensor" else t
            logits, _ = model(tokens[:, t:t + 1], cache=cache, start_pos=pos)
            rows.append(logits[:, 0])
        outs[mode] = torch.stack(rows, 1)
    return full[:, prompt_len:], outs["int"], outs["tensor"]


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_tensor_position_step_equals_int_step_and_full_forward(attn, pos):
    full, by_int, by_tensor = _decode_both(tiny_config(attn=attn, pos_enc=pos))
    torch.testing.assert_close(by_tensor, by_int, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(by_tensor, full, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("ffn", ["moe", "moe_shared", "moe_ec", "swiglu"])
def test_tensor_position_step_with_ffn_kinds(ffn):
    full, by_int, by_tensor = _decode_both(tiny_config(ffn=ffn))
    torch.testing.assert_close(by_tensor, by_int, atol=1e-5, rtol=1e-5)


def test_tensor_position_writes_only_its_slot():
    model = Transformer(tiny_config()).eval()
    cache = model.make_cache(1)
    with torch.no_grad():
        model(torch.tensor([[3]]), cache=cache, start_pos=torch.tensor([4]))
    k = cache[0].buffers[0]  # (B, KV, S, hd)
    written = k.abs().sum(dim=(0, 1, 3)) > 0
    assert written.nonzero().flatten().tolist() == [4]


def test_tensor_position_needs_a_cache():
    model = Transformer(tiny_config())
    with pytest.raises(ValueError, match="cache"):
        model(torch.tensor([[1]]), start_pos=torch.tensor([0]))

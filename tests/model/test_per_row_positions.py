"""Rows of one batch at different positions (``start_pos`` a ``(B,)`` tensor), as the requests of a
continuous batch are: each row's logits are the ones it gets decoded alone, in every attention x
position kind and with MoE, and each row's cache writes land at its own positions only."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ATTN_X_POS, tiny_config

from transformer_toolkit.model import Transformer

LENGTHS = (3, 9, 6)  # prompt length per row: three requests at three positions
STEPS = 5


def _rows(cache, i: int):
    return [layer.view(slice(i, i + 1)) for layer in cache]


@torch.no_grad()
def _batched_vs_alone(cfg):
    torch.manual_seed(0)
    model = Transformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(0, cfg.vocab_size, (1, n + STEPS), generator=g) for n in LENGTHS]
    # alone: each sequence in its own cache, int positions (the ordinary decode path)
    alone = []
    for s, n in zip(seqs, LENGTHS, strict=True):
        cache = model.make_cache(1)
        model(s[:, :n], cache=cache, start_pos=0)
        alone.append(torch.cat([model(s[:, t:t + 1], cache=cache, start_pos=t)[0][:, 0]
                                for t in range(n, n + STEPS)]))
    # batched: each prefilled into its own row of one cache, then decoded together
    cache = model.make_cache(len(seqs))
    for i, (s, n) in enumerate(zip(seqs, LENGTHS, strict=True)):
        model(s[:, :n], cache=_rows(cache, i), start_pos=0)
    batched = []
    for step in range(STEPS):
        pos = torch.tensor([n + step for n in LENGTHS])
        tok = torch.cat([s[:, n + step:n + step + 1] for s, n in zip(seqs, LENGTHS, strict=True)])
        batched.append(model(tok, cache=cache, start_pos=pos)[0][:, 0])
    batched = torch.stack(batched, dim=1)  # (B, STEPS, V)
    full = [model(s)[0][0, n:] for s, n in zip(seqs, LENGTHS, strict=True)]
    return batched, torch.stack(alone), torch.stack(full), cache


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_rows_at_different_positions_give_the_logits_each_gets_alone(attn, pos):
    batched, alone, full, _ = _batched_vs_alone(tiny_config(attn=attn, pos_enc=pos))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(batched, full, atol=1e-4, rtol=1e-4)
    assert torch.equal(batched.argmax(-1), alone.argmax(-1))


@pytest.mark.parametrize("ffn", ["moe", "moe_shared", "moe_ec", "geglu"])
@pytest.mark.parametrize("pos", ["rope", "alibi", "learned"])
def test_rows_at_different_positions_with_ffn_kinds(ffn, pos):
    batched, alone, _, _ = _batched_vs_alone(tiny_config(attn="gqa", ffn=ffn, pos_enc=pos))
    torch.testing.assert_close(batched, alone, atol=1e-5, rtol=1e-5)


def test_each_row_writes_only_its_own_positions():
    model = Transformer(tiny_config()).eval()
    cache = model.make_cache(3)
    with torch.no_grad():
        model(torch.tensor([[3], [4], [5]]), cache=cache, start_pos=torch.tensor([2, 7, 0]))
    k = cache[0].buffers[0]  # (B, KV, S, hd)
    written = [(k[b].abs().sum(dim=(0, 2)) > 0).nonzero().flatten().tolist() for b in range(3)]
    assert written == [[2], [7], [0]]


def test_a_view_shares_the_cache_memory():
    model = Transformer(tiny_config()).eval()
    cache = model.make_cache(3, max_len=16)
    view = [layer.view(slice(1, 3), 8) for layer in cache]
    assert view[0].max_len == 8 and view[0].buffers[0].shape[0] == 2
    with torch.no_grad():
        model(torch.tensor([[1, 2], [3, 4]]), cache=view, start_pos=0)
    k = cache[0].buffers[0]
    assert k[0].abs().sum() == 0 and k[1, :, :2].abs().sum() > 0 and k[1, :, 2:].abs().sum() == 0

"""Packed rows: each document in a row is computed exactly as if it were alone."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ATTNS, POS, tiny_config

from transformer_toolkit.model import Transformer


@pytest.mark.parametrize("attn", ATTNS)
@pytest.mark.parametrize("pos", POS)
@pytest.mark.parametrize("ffn", ["swiglu", "moe", "moe_shared"])
def test_packed_equals_separate(attn, pos, ffn):
    model = Transformer(tiny_config(attn=attn, pos_enc=pos, ffn=ffn)).eval()
    a, b, c = (torch.randint(0, 97, (1, n)) for n in (7, 9, 5))
    row = torch.cat([a, b, c, torch.zeros(1, 3, dtype=torch.long)], dim=1)
    doc = torch.tensor([[0] * 7 + [1] * 9 + [2] * 5 + [-1] * 3])
    with torch.no_grad():
        packed, _ = model(row, doc_ids=doc)
        alone = [model(t)[0][0] for t in (a, b, c)]
    torch.testing.assert_close(packed[0, :7], alone[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, 7:16], alone[1], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(packed[0, 16:21], alone[2], atol=1e-5, rtol=1e-4)


def test_one_document_equals_the_plain_forward():
    model = Transformer(tiny_config()).eval()
    x = torch.randint(0, 97, (2, 12))
    with torch.no_grad():
        torch.testing.assert_close(model(x, doc_ids=torch.zeros_like(x))[0], model(x)[0], atol=1e-5, rtol=1e-4)


def test_packed_gradients_stay_inside_their_document():
    model = Transformer(tiny_config())
    x = torch.randint(0, 97, (1, 10))
    doc = torch.tensor([[0] * 4 + [1] * 6])
    emb = model.embed(x).detach().requires_grad_(True)
    model.embed.forward = lambda _: emb  # differentiate w.r.t. the token embeddings
    logits, _ = model(x, doc_ids=doc)
    logits[0, 3].sum().backward()  # last token of document 0
    assert emb.grad[0, 4:].abs().max() == 0  # document 1 had no influence
    assert emb.grad[0, :4].abs().max() > 0


def test_doc_ids_refuse_a_cache():
    model = Transformer(tiny_config())
    x = torch.randint(0, 97, (1, 4))
    with pytest.raises(ValueError, match="not for cached decoding"):
        model(x, cache=model.make_cache(1), doc_ids=torch.zeros_like(x))

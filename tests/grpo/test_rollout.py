"""Group sampling (GRPO rollouts): each prompt prefilled once, every row equal to its own ``generate``."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent.parent / "inference"))
from inference_helpers import model as tiny_model  # noqa: E402
from inference_helpers import prompts as make_prompts  # noqa: E402

from transformer_toolkit.inference import SamplingParams, generate  # noqa: E402
from transformer_toolkit.inference.groups import sample_groups  # noqa: E402

VARIANTS = [dict(), dict(attn="gqa", pos_enc="alibi"), dict(attn="mla"), dict(pos_enc="learned"),
            dict(pos_enc="sinusoidal", attn="mqa"), dict(ffn="moe")]


@pytest.mark.parametrize("kw", VARIANTS, ids=lambda kw: "-".join(kw.values()) or "default")
def test_greedy_rows_equal_generate(kw):
    """Prompts of different lengths, greedy: every row of a group is that prompt's ``generate``
    (positions per row, padded prefill, copied cache rows are all exact)."""
    model = tiny_model(**kw)
    prompts = make_prompts([3, 7, 5])
    out = sample_groups(model, prompts, group=2, max_new=8, params=SamplingParams(0.0))
    assert out.tokens.shape == (6, 8)
    for p, ids in enumerate(prompts):
        want = generate(model, ids, max_new=8, temperature=0)[ids.shape[0]:]
        for g in range(2):
            assert torch.equal(out.tokens[p * 2 + g], want), (p, g)


def test_stop_ids_lengths_and_padding():
    model = tiny_model()
    prompts = make_prompts([4, 6])
    free = sample_groups(model, prompts, group=3, max_new=10, params=SamplingParams(0.0))
    stop = int(free.tokens[0, 2])  # the third token of prompt 0's greedy completion
    out = sample_groups(model, prompts, group=3, max_new=10, params=SamplingParams(0.0), stop_ids=[stop], pad_id=0)
    for r in range(6):
        row, n = out.tokens[r], int(out.lengths[r])
        hits = (free.tokens[r] == stop).nonzero()
        assert n == (int(hits[0]) + 1 if len(hits) else 10)
        assert torch.equal(row[:n], free.tokens[r, :n]) and (row[n:] == 0).all()
    assert out.lengths[0] == 3


def test_prompt_prefilled_once():
    """One prefill forward of P rows, then one P x G-row forward per new token."""
    model = tiny_model()
    shapes = []
    hook = model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape)))
    try:
        sample_groups(model, make_prompts([5, 9]), group=4, max_new=6, params=SamplingParams(1.0),
                      generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    assert shapes[0] == (2, 9)
    assert shapes[1:] == [(8, 1)] * 5


def test_sampled_rows_differ_and_seeded():
    model = tiny_model()
    prompts = make_prompts([4])
    a = sample_groups(model, prompts, group=8, max_new=8, params=SamplingParams(1.5),
                      generator=torch.Generator().manual_seed(3))
    b = sample_groups(model, prompts, group=8, max_new=8, params=SamplingParams(1.5),
                      generator=torch.Generator().manual_seed(3))
    assert torch.equal(a.tokens, b.tokens)
    assert len({tuple(r.tolist()) for r in a.tokens}) > 1

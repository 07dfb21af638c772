"""The engine: independent requests decoded together at their own positions (continuous
batching), joining and leaving between steps, give each the tokens it gets alone; slots are
freed at once and keep their prefix for the next prompt that shares it."""

from __future__ import annotations

import pytest
import torch
from inference_helpers import model as _model
from inference_helpers import prompts as _prompts
from model_helpers import ATTN_X_POS

from transformer_toolkit.inference import Engine

# (prompt length, new tokens, the step at which the request arrives)
SCHEDULE = [(5, 9, 0), (11, 4, 0), (3, 12, 2), (7, 6, 3), (9, 5, 7), (4, 3, 8)]


@torch.inference_mode()
def run_schedule(engine: Engine, prompts, schedule) -> dict[int, list[int]]:
    """Greedy decoding of requests that arrive and leave at different steps; returns each
    request's new tokens."""
    out = {i: [] for i in range(len(prompts))}
    slot_of, last = {}, {}
    step, pending = 0, list(range(len(prompts)))
    while pending or slot_of:
        for i in [i for i in pending if schedule[i][2] <= step and engine.active < engine.slots]:
            pending.remove(i)
            slot, logits, _ = engine.admit(prompts[i])
            slot_of[i], last[i] = slot, int(logits.argmax())
            out[i].append(last[i])
        for i in [i for i in slot_of if len(out[i]) == schedule[i][1]]:
            engine.release(slot_of.pop(i))
        if slot_of:
            order = {s: i for i, s in slot_of.items()}
            reqs = [order[s] for s in engine.active_slots()]
            logits = engine.decode(torch.tensor([last[i] for i in reqs]))
            for i, row in zip(reqs, logits.argmax(-1).tolist(), strict=True):
                last[i] = row
                out[i].append(row)
            for i in [i for i in slot_of if len(out[i]) == schedule[i][1]]:
                engine.release(slot_of.pop(i))
        step += 1
    return out


def _alone(model, prompts, schedule) -> dict[int, list[int]]:
    return {i: model.generate(p, n, temperature=0)[len(p):].tolist()
            for i, (p, (_, n, _)) in enumerate(zip(prompts, schedule, strict=True))}


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_requests_joining_and_leaving_get_the_tokens_they_get_alone(attn, pos):
    model = _model(attn=attn, pos_enc=pos)
    prompts = _prompts([s[0] for s in SCHEDULE])
    engine = Engine.create(model, slots=4, max_len=32)  # fewer slots than requests: some wait
    assert run_schedule(engine, prompts, SCHEDULE) == _alone(model, prompts, SCHEDULE)
    assert engine.active == 0


@pytest.mark.parametrize("ffn", ["moe", "moe_shared", "moe_ec", "geglu"])
def test_continuous_batching_with_ffn_kinds(ffn):
    model = _model(attn="gqa", ffn=ffn)
    prompts = _prompts([s[0] for s in SCHEDULE], seed=2)
    engine = Engine.create(model, slots=3, max_len=32)
    assert run_schedule(engine, prompts, SCHEDULE) == _alone(model, prompts, SCHEDULE)


@torch.inference_mode()
def test_a_freed_slot_keeps_its_prefix_for_the_next_prompt():
    model = _model(attn="gqa")
    engine = Engine.create(model, slots=2, max_len=32)
    first, other = _prompts([8, 6])
    slot, _, reused = engine.admit(first)
    assert reused == 0 and engine.active == 1
    engine.release(slot)
    assert engine.active == 0 and torch.equal(engine.held(slot), first)  # freed at once, prefix kept
    engine.admit(other)  # lands in the other slot: the first one still holds `first`
    follow = torch.cat([first, torch.tensor([5, 6, 7])])
    slot2, logits, reused = engine.admit(follow)
    assert slot2 == slot and reused == 8
    with torch.no_grad():
        ref = model(follow[None])[0][0, -1]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_a_prefix_is_copied_from_a_decoding_slot():
    """Two requests with the same system prompt: the second copies the first's cached prefix."""
    model = _model(attn="mla")
    engine = Engine.create(model, slots=3, max_len=32)
    system, q1, q2 = _prompts([10, 4, 5], seed=3)
    engine.admit(torch.cat([system, q1]))
    _, logits, reused = engine.admit(torch.cat([system, q2]))
    assert reused == 10 and engine.active == 2
    with torch.no_grad():
        ref = model(torch.cat([system, q2])[None])[0][0, -1]
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_expert_choice_models_reuse_nothing():
    model = _model(attn="gqa", ffn="moe_ec")
    engine = Engine.create(model, slots=2, max_len=32)
    p = _prompts([8])[0]
    engine.release(engine.admit(p)[0])
    assert engine.admit(torch.cat([p, p[:2]]))[2] == 0


@torch.inference_mode()
def test_limits_are_errors():
    model = _model()
    engine = Engine.create(model, slots=1, max_len=8)
    with pytest.raises(ValueError, match="does not fit"):
        engine.admit(torch.arange(9))
    slot, _, _ = engine.admit(torch.arange(7))
    with pytest.raises(RuntimeError, match="every slot"):
        engine.admit(torch.arange(3))
    engine.decode(torch.tensor([1]))  # position 7: the last one
    with pytest.raises(RuntimeError, match="full"):
        engine.decode(torch.tensor([1]))
    engine.release(slot)
    with pytest.raises(ValueError, match="not decoding"):
        engine.release(slot)

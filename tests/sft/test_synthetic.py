"""The built-in synthetic task set: checkable answers, multi-turn share, held-out split."""

from __future__ import annotations

import pytest

from transformer_toolkit.cli.builtin import synthetic_split
from transformer_toolkit.sft.synthetic import synthetic_tasks, user_prompts


def check_answer(prompt: str, answer: str) -> None:
    task, _, args = prompt.partition(": ")
    if task == "reverse":
        assert answer == " ".join(reversed(args.split()))
    else:
        a, b = args.split(" + ")
        assert answer == str(int(a) + int(b))


def test_answers_are_right_and_single_turn_by_default():
    samples = synthetic_tasks(200, seed=3)
    assert all(len(s["messages"]) == 2 for s in samples)
    for s in samples:
        check_answer(s["messages"][0]["content"], s["messages"][1]["content"])
    assert synthetic_tasks(50, seed=3) == samples[:50]  # deterministic per seed


def test_multi_turn_share_and_answers():
    samples = synthetic_tasks(1000, seed=0, multi_turn=0.3)
    two = [s for s in samples if len(s["messages"]) == 4]
    assert all(len(s["messages"]) in (2, 4) for s in samples)
    assert 0.25 < len(two) / len(samples) < 0.35
    for s in two:
        roles = [m["role"] for m in s["messages"]]
        assert roles == ["user", "assistant", "user", "assistant"]
        for q, a in ((0, 1), (2, 3)):
            check_answer(s["messages"][q]["content"], s["messages"][a]["content"])
    with pytest.raises(ValueError, match="multi_turn"):
        synthetic_tasks(3, multi_turn=1.5)


def test_held_out_prompts_appear_nowhere_in_training():
    train, held = synthetic_split(600, 40, ["reverse", "add"], multi_turn=0.5)
    assert len(held) == 40 and all(len(s["messages"]) == 2 for s in held)
    assert not user_prompts(held) & user_prompts(train)
    assert any(len(s["messages"]) == 4 for s in train)

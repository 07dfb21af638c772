"""Prompt loaders (TRL's prompt-only rows) and the built-in prompts with checkable answers."""

from __future__ import annotations

import pytest
from grpo_helpers import rows, small_bpe

from transformer_toolkit.grpo import PromptDataConfig, from_prompt_samples, synthetic_prompts
from transformer_toolkit.grpo.synthetic import questions
from transformer_toolkit.sft.chat import encode_chat
from transformer_toolkit.tokenizer.templates import ChatTemplate


def test_rows_encode_as_chat_or_text_with_their_columns():
    tok = small_bpe()
    conv = rows(6)
    train_dl, _ = from_prompt_samples(conv, tok, PromptDataConfig(batch_size=3, split=1.0, shuffle=False))
    ds = train_dl.dataset
    assert ds.conversational and ds.ids[0].tolist() == encode_chat(ChatTemplate("chatml"), tok, ds.prompts[0])
    batch = next(iter(train_dl))
    assert len(batch["ids"]) == 3 and batch["columns"]["answer"] == ["blue"] * 3
    plain = rows(6, conversational=False)
    as_text, _ = from_prompt_samples(plain, tok, PromptDataConfig(strings="text", split=1.0, shuffle=False))
    as_chat, _ = from_prompt_samples(plain, tok, PromptDataConfig(strings="chat", split=1.0, shuffle=False))
    assert as_text.dataset.ids[0].tolist() == tok.encode(as_text.dataset.prompts[0])
    assert as_chat.dataset.ids[0].tolist() == ds.ids[0].tolist() and not as_chat.dataset.conversational


def test_bad_rows_and_long_prompts():
    tok = small_bpe()
    with pytest.raises(ValueError, match="row 1: columns"):
        from_prompt_samples([{"prompt": "a", "answer": "1"}, {"prompt": "b"}], tok, PromptDataConfig(split=1.0))
    with pytest.raises(ValueError, match="needs a 'prompt'"):
        from_prompt_samples([{"question": "a"}], tok, PromptDataConfig(split=1.0))
    long = rows(4) + [{"prompt": "the sky " * 40, "answer": "x"}]
    with pytest.warns(UserWarning, match="skipped 1 of 5 prompts longer than max_prompt_len=48"):
        train_dl, _ = from_prompt_samples(long, tok, PromptDataConfig(max_prompt_len=48, split=1.0))
    assert len(train_dl.dataset) == 4


def test_synthetic_prompts_have_right_answers_and_held_out_sets():
    train = synthetic_prompts(40, seed=0, tasks=("add3", "reverse_long"))
    for r in train:
        q = r["prompt"][0]["content"]
        if q.startswith("add: "):
            a, b = (int(x) for x in q[5:].split(" + "))
            assert 100 <= a <= 999 and 100 <= b <= 999 and r["answer"] == str(a + b)
        else:
            words = q.removeprefix("reverse: ").split()
            assert 4 <= len(words) <= 6 and r["answer"] == " ".join(reversed(words))
    held = synthetic_prompts(20, seed=1, exclude=questions(train))
    assert not questions(held) & questions(train)

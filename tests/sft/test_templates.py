"""Chat templates: the real formats, trained spans, overrides, Jinja parity with transformers."""

from __future__ import annotations

import pytest
from sft_helpers import CONVERSATION, small_bpe

from transformer_toolkit import ChatTemplate
from transformer_toolkit.tokenizer.templates import PRESETS

TWO = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]


def test_chatml_real_format():
    text, spans = ChatTemplate("chatml").format_messages(CONVERSATION[:3])
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nWhat is Python?<|im_end|>\n"
                    "<|im_start|>assistant\nPython is a programming language.<|im_end|>\n")
    assert [text[a:b] for a, b in spans] == ["Python is a programming language.<|im_end|>\n"]


def test_llama3_real_format():
    text, spans = ChatTemplate("llama3").format_messages(TWO)
    assert text == ("[BOS]<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
                    "<|start_header_id|>assistant<|end_header_id|>\n\nHello!<|eot_id|>")
    assert [text[a:b] for a, b in spans] == ["Hello!<|eot_id|>"]


def test_gemma_folds_system_and_calls_the_assistant_model():
    text, spans = ChatTemplate("gemma").format_messages(CONVERSATION[:3])
    assert text == ("[BOS]<start_of_turn>user\nBe brief.\n\nWhat is Python?<end_of_turn>\n"
                    "<start_of_turn>model\nPython is a programming language.<end_of_turn>\n")
    assert [text[a:b] for a, b in spans] == ["Python is a programming language.<end_of_turn>\n"]


def test_alpaca_and_raw():
    text, _ = ChatTemplate("alpaca").format_messages(TWO)
    assert text == "### Instruction:\nHi\n\n### Response:\nHello!\n\n"
    text, spans = ChatTemplate("raw").format_messages(TWO)
    assert text == "User: Hi\nAssistant: Hello!\n"
    assert [text[a:b] for a, b in spans] == [" Hello!\n"]


@pytest.mark.parametrize("preset", list(PRESETS))
def test_every_assistant_turn_is_a_span(preset):
    t = ChatTemplate(preset)
    text, spans = t.format_messages(CONVERSATION)
    got = [text[a:b] for a, b in spans]
    want = [t.content_prefix + m["content"] + t.assistant_closer for m in CONVERSATION if m["role"] == "assistant"]
    assert got == want
    prompt, _ = t.format_messages(CONVERSATION[:2], add_generation_prompt=True)
    assert prompt.endswith(t.assistant_header)


def test_custom_template_as_the_readme_writes_it():
    t = ChatTemplate(preset="chatml", assistant_header="<\\|im_start\\|>assistant\n",
                     assistant_closer="<\\|im_end\\|>\n")
    assert t.assistant_header == "<|im_start|>assistant\n"  # Markdown-escaped pipes are read as pipes
    assert t.assistant_closer == "<|im_end|>\n"
    t2 = ChatTemplate(preset="chatml", assistant_closer="<|im_end|>\n\n")
    assert t2.format_messages(TWO)[0].endswith("Hello!<|im_end|>\n\n")
    assert ChatTemplate.from_dict(t2.to_dict()) == t2


def test_bad_template_input():
    with pytest.raises(ValueError, match="unknown chat template preset 'chatlm'.*did you mean 'chatml'"):
        ChatTemplate("chatlm")
    with pytest.raises(ValueError, match="assistant_heder.*did you mean 'assistant_header'"):
        ChatTemplate("chatml", assistant_heder="x")
    with pytest.raises(ValueError, match="message 1 has role 'bot'"):
        ChatTemplate("chatml").format_messages([TWO[0], {"role": "bot", "content": "x"}])
    with pytest.raises(ValueError, match="content must be a string"):
        ChatTemplate("chatml").format_messages([{"role": "user", "content": None}])


def test_tokenizer_validates_a_template_object():
    tok = small_bpe()
    assert tok.validate_template(ChatTemplate("llama3")) == {"<|start_header_id|>": 9, "<|end_header_id|>": 10,
                                                             "<|eot_id|>": 11}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_jinja_renders_the_same_text_in_transformers(preset):
    hf = small_bpe().to_transformers()
    t = ChatTemplate(preset)
    hf.chat_template = t.to_jinja()
    convs = [TWO, CONVERSATION, CONVERSATION[:2], [{"role": "system", "content": "only"}]]
    for conv in convs:
        for gen in (False, True):
            ours = t.format_messages(conv, add_generation_prompt=gen)[0]
            assert hf.apply_chat_template(conv, tokenize=False, add_generation_prompt=gen) == ours

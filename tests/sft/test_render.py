"""Loss masks from token boundaries, for every preset with every tokenizer kind; schemas; truncation."""

from __future__ import annotations

import numpy as np
import pytest
from sft_helpers import CONVERSATION, small_bpe

from transformer_toolkit import ChatTemplate, HFTokenizer
from transformer_toolkit.sft.render import render, to_messages, truncate
from transformer_toolkit.tokenizer import ByteLevelTokenizer
from transformer_toolkit.tokenizer.templates import PRESETS


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hf_tok")
    small_bpe().to_transformers().save_pretrained(folder)
    return {"bytes": ByteLevelTokenizer(), "bpe": small_bpe(), "hf": HFTokenizer(folder)}


@pytest.mark.parametrize("preset", list(PRESETS))
@pytest.mark.parametrize("kind", ["bytes", "bpe", "hf"])
def test_mask_covers_exactly_the_assistant_turns(tokenizers, preset, kind):
    tok, t = tokenizers[kind], ChatTemplate(preset)
    r = render(CONVERSATION, tok, t)
    text, spans = t.format_messages(CONVERSATION, bos=False)
    eos = "" if tok.eos_id is None else tok.decode([tok.eos_id])
    trained = "".join(text[a:b] for a, b in spans) + eos
    assert tok.decode(r.ids[r.mask].tolist()) == trained
    # everything else, in order, is the context: BOS, system, user turns and every header
    context = tok.decode(r.ids[~r.mask].tolist())
    rest, last = [], 0
    for a, b in spans:
        rest.append(text[last:a])
        last = b
    rest.append(text[last:])
    bos = tok.decode([tok.bos_id]) if t.bos_token and tok.bos_id is not None else ""
    assert context == bos + "".join(rest)
    # and the ids are what inference gets by encoding the whole formatted string
    body = r.ids[1:] if bos else r.ids
    body = body[:-1] if eos else body
    assert body.tolist() == tok.encode(text)


def test_final_eos_and_closer_are_trained_headers_are_not():
    tok, t = small_bpe(), ChatTemplate("llama3")
    r = render(CONVERSATION[1:3], tok, t)
    assert r.ids[0] == tok.bos_id and not r.mask[0]
    assert r.ids[-1] == tok.eos_id and r.mask[-1]
    assert r.ids[-2] == 11 and r.mask[-2]  # <|eot_id|> closing the assistant turn
    for special in (9, 10):  # header tokens are context everywhere
        assert not r.mask[r.ids == special].any()
    eot = np.flatnonzero(r.ids == 11)
    assert not r.mask[eot[0]]  # the user turn's <|eot_id|> is context


def test_no_eos_when_the_conversation_ends_with_the_user():
    tok = small_bpe()
    r = render(CONVERSATION[:4], tok, ChatTemplate("chatml"))
    assert r.ids[-1] != tok.eos_id


def test_schemas_are_detected_per_sample():
    msgs = [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]
    assert to_messages({"messages": msgs}) == msgs
    assert to_messages({"prompt": "q", "response": "a"}) == msgs
    assert to_messages({"instruction": "q", "input": "", "output": "a"}) == msgs
    assert to_messages({"instruction": "q", "input": "ctx", "output": "a"})[0]["content"] == "q\n\nctx"
    assert to_messages({"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}) == msgs
    assert to_messages({"prompt": "q", "response": "a", "system": "s"})[0] == {"role": "system", "content": "s"}


def test_unrecognised_sample_names_index_and_keys():
    with pytest.raises(ValueError, match=r"sample 7 has an unrecognised schema \(keys: \['answer', 'question'\]\)"):
        to_messages({"question": "q", "answer": "a"}, 7)
    with pytest.raises(ValueError, match="sample 3, turn 1: ShareGPT 'from'"):
        to_messages({"conversations": [{"from": "human", "value": "q"}, {"from": "robot", "value": "a"}]}, 3)
    with pytest.raises(ValueError, match="sample 2 is 'prompt_response', not schema='messages'"):
        to_messages({"prompt": "q", "response": "a"}, 2, schema="messages")


def test_turn_truncation_drops_whole_exchanges_from_the_end():
    tok, t = small_bpe(), ChatTemplate("chatml")
    full = render(CONVERSATION, tok, t)
    first = render(CONVERSATION[:3], tok, t)
    out = truncate(CONVERSATION, tok, t, len(full) - 1, "turn")
    assert out.ids.tolist() == first.ids.tolist() and out.mask.tolist() == first.mask.tolist()
    assert truncate(CONVERSATION, tok, t, len(full), "turn").ids.tolist() == full.ids.tolist()
    assert truncate(CONVERSATION, tok, t, len(first) - 1, "turn") is None  # nothing whole fits: dropped


def test_token_truncation_keeps_the_head():
    tok, t = small_bpe(), ChatTemplate("chatml")
    full = render(CONVERSATION, tok, t)
    out = truncate(CONVERSATION, tok, t, len(full) - 3, "token")
    assert out.ids.tolist() == full.ids[:-3].tolist() and out.mask.tolist() == full.mask[:-3].tolist()
    n_context = int(np.argmax(full.mask))  # tokens before the first trained one
    assert truncate(CONVERSATION, tok, t, n_context, "token") is None  # no trained token left: dropped

"""The server through the official ``openai`` client: chat and text completions, streamed and
not, give the text ``model.generate`` gives; usage, stop strings, n, seed, logprobs."""

from __future__ import annotations

import threading

import pytest
import torch
from serve_helpers import Server, client, served, tokenizer

from transformer_toolkit.sft import ChatTemplate
from transformer_toolkit.sft.chat import chat_stop_ids, encode_chat

openai = pytest.importorskip("openai")

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "what is python"}]


@pytest.fixture(scope="module")
def server():
    from transformer_toolkit.serve.app import create_app

    with Server(create_app([served("tiny", slots=4)])) as s:
        yield s


def _greedy_reply(model, messages, max_new):
    """What ``model.generate`` answers: greedy ids up to the first stop id, decoded."""
    tok, template = tokenizer(), ChatTemplate("chatml")
    ids = encode_chat(template, tok, messages)
    stops = chat_stop_ids(template, tok)
    new = model.generate(torch.tensor(ids), max_new, temperature=0, stop_ids=stops)[len(ids):].tolist()
    n = next((i + 1 for i, t in enumerate(new) if t in stops), len(new))
    text = tok.decode([t for t in new[:n] if t not in stops], skip_special_tokens=True)
    return text, len(ids), n, "stop" if n < max_new or new[n - 1] in stops else "length"


def test_chat_completion_equals_generate(server):
    model = served().model
    want, n_prompt, n_new, finish = _greedy_reply(model, MESSAGES, 24)
    r = client(server).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    assert r.object == "chat.completion" and r.model == "tiny" and r.id.startswith("chatcmpl-")
    assert r.choices[0].message.role == "assistant" and r.choices[0].message.content == want
    assert r.choices[0].finish_reason == finish
    assert (r.usage.prompt_tokens, r.usage.completion_tokens) == (n_prompt, n_new)
    assert r.usage.total_tokens == n_prompt + n_new


def test_streamed_chat_equals_the_whole_reply(server):
    want, n_prompt, n_new, finish = _greedy_reply(served().model, MESSAGES, 24)
    chunks = list(client(server).chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, stream=True,
        stream_options={"include_usage": True}))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == want
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [finish]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == n_new


def test_text_completion_streamed_and_not(server):
    model, tok = served().model, tokenizer()
    ids = tok.encode("how do i reverse")
    new = model.generate(torch.tensor(ids), 12, temperature=0, stop_ids=[tok.eos_id])[len(ids):].tolist()
    new = new[:new.index(tok.eos_id)] if tok.eos_id in new else new
    want = tok.decode(new, skip_special_tokens=True)
    c = client(server)
    r = c.completions.create(model="tiny", prompt="how do i reverse", max_tokens=12, temperature=0)
    assert r.object == "text_completion" and r.choices[0].text == want
    streamed = "".join(ch.choices[0].text for ch in c.completions.create(
        model="tiny", prompt="how do i reverse", max_tokens=12, temperature=0, stream=True) if ch.choices)
    assert streamed == want
    echo = c.completions.create(model="tiny", prompt="how do i reverse", max_tokens=12, temperature=0, echo=True)
    assert echo.choices[0].text == "how do i reverse" + want
    by_ids = c.completions.create(model="tiny", prompt=ids, max_tokens=12, temperature=0)
    assert by_ids.choices[0].text == want


def test_stop_strings_n_seed_and_top_k(server):
    c = client(server)
    full = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0)
    text = full.choices[0].message.content
    assert len(text) > 6
    stop = text[3:6]
    cut = c.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, stop=[stop])
    assert cut.choices[0].message.content == text[:text.index(stop)]
    assert cut.choices[0].finish_reason == "stop"
    streamed = "".join(ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=24, temperature=0, stop=stop, stream=True) if ch.choices)
    assert streamed == text[:text.index(stop)]  # never a piece of the stop string shown
    kw = dict(model="tiny", messages=MESSAGES, max_tokens=12, temperature=1.0, n=3, seed=11,
              extra_body={"top_k": 30})
    a, b = c.chat.completions.create(**kw), c.chat.completions.create(**kw)
    assert [x.message.content for x in a.choices] == [x.message.content for x in b.choices]
    assert [x.index for x in a.choices] == [0, 1, 2]
    assert len({x.message.content for x in a.choices}) > 1  # each choice its own seed


def test_logprobs(server):
    r = client(server).chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=6, temperature=0,
                                               logprobs=True, top_logprobs=2)
    entries = r.choices[0].logprobs.content
    assert entries and all(len(e.top_logprobs) == 2 for e in entries)
    for e in entries:  # greedy: the chosen token is the most likely one
        assert e.logprob == pytest.approx(e.top_logprobs[0].logprob) and e.logprob <= 0
    t = client(server).completions.create(model="tiny", prompt="what is", max_tokens=4, temperature=0, logprobs=2)
    assert len(t.choices[0].logprobs.token_logprobs) == len(t.choices[0].logprobs.tokens) > 0


def test_models_list_and_unknown_model(server):
    c = client(server)
    assert [m.id for m in c.models.list().data] == ["tiny"]
    with pytest.raises(openai.NotFoundError) as e:
        c.chat.completions.create(model="nope", messages=MESSAGES)
    assert e.value.body["code"] == "model_not_found"


def test_concurrent_requests_equal_their_sequential_answers(server):
    """24 clients at once: none lost, none mixed with another's (each equals its answer alone)."""
    c = client(server)
    questions = [[{"role": "user", "content": f"add {i} {2 * i} and {'reverse' if i % 2 else 'sum'}"}]
                 for i in range(24)]
    kw = dict(model="tiny", max_tokens=16, temperature=0)
    alone = [c.chat.completions.create(messages=q, **kw).choices[0].message.content for q in questions]
    together = [None] * len(questions)

    def ask(i):
        stream = c.chat.completions.create(messages=questions[i], stream=True, **kw)
        together[i] = "".join(ch.choices[0].delta.content or "" for ch in stream if ch.choices)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert together == alone
    assert len(set(alone)) > 1

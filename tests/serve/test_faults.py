"""Bad input gets an OpenAI error object with a 4xx status and the server keeps serving; a client
gone mid-stream frees its slot; the request limit answers 429; the API key is checked."""

from __future__ import annotations

import json
import time

import pytest
import torch
from serve_helpers import Server, SlowModel, client, served, tiny_model

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

CHAT = "/v1/chat/completions"
HELLO = [{"role": "user", "content": "what is python"}]


def _app(**kw):
    from transformer_toolkit.serve.app import create_app

    models = kw.pop("models", None) or [served("tiny", ctx=64)]
    return create_app(models, **kw)


@pytest.fixture(scope="module")
def server():
    with Server(_app(max_body=4096)) as s:
        yield s


def _post(server, path, body, **kw) -> httpx.Response:
    content = body if isinstance(body, (bytes, str)) else json.dumps(body)
    return httpx.post(server.url + path, content=content, headers={"content-type": "application/json"},
                      timeout=30, **kw)


BAD = [
    ("not json", b"{'model': 'tiny'", 400, None),
    ("not an object", [1, 2], 400, None),
    ("no model", {"messages": HELLO}, 400, "model"),
    ("unknown model", {"model": "gpt-9", "messages": HELLO}, 404, "model"),
    ("no messages", {"model": "tiny"}, 400, "messages"),
    ("empty messages", {"model": "tiny", "messages": []}, 400, "messages"),
    ("unknown role", {"model": "tiny", "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
    ("image part", {"model": "tiny", "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400,
     "messages[0].content"),
    ("max_tokens 0", {"model": "tiny", "messages": HELLO, "max_tokens": 0}, 400, "max_tokens"),
    ("max_tokens negative", {"model": "tiny", "messages": HELLO, "max_tokens": -5}, 400, "max_tokens"),
    ("max_tokens over the context", {"model": "tiny", "messages": HELLO, "max_tokens": 64}, 400, "max_tokens"),
    ("prompt longer than the context", {"model": "tiny", "messages": [{"role": "user", "content": "add " * 80}]},
     400, "messages"),
    ("temperature out of range", {"model": "tiny", "messages": HELLO, "temperature": 3}, 400, "temperature"),
    ("temperature a string", {"model": "tiny", "messages": HELLO, "temperature": "hot"}, 400, "temperature"),
    ("tools", {"model": "tiny", "messages": HELLO, "tools": [{"type": "function"}]}, 400, "tools"),
    ("too many stops", {"model": "tiny", "messages": HELLO, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
    ("n too large", {"model": "tiny", "messages": HELLO, "n": 100}, 400, "n"),
]


@pytest.mark.parametrize("what,body,status,param", BAD, ids=[b[0] for b in BAD])
def test_bad_requests_get_openai_errors_and_the_server_keeps_serving(server, what, body, status, param):
    r = _post(server, CHAT, body)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert err["message"] and err["type"] and err["param"] == param
    ok = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=3)
    assert ok.choices[0].finish_reason in ("stop", "length")


def test_bad_completion_requests(server):
    for body, param in [({"model": "tiny"}, "prompt"), ({"model": "tiny", "prompt": [1, "x"]}, "prompt"),
                        ({"model": "tiny", "prompt": [10 ** 6]}, "prompt"),
                        ({"model": "tiny", "prompt": "hi", "logprobs": 9}, "logprobs")]:
        r = _post(server, "/v1/completions", body)
        assert r.status_code == 400 and r.json()["error"]["param"] == param, r.text


def test_over_long_body_and_unknown_route(server):
    r = _post(server, CHAT, {"model": "tiny", "messages": [{"role": "user", "content": "x" * 10_000}]})
    assert r.status_code == 413 and "limit" in r.json()["error"]["message"]
    r = httpx.get(server.url + "/v1/nothing", timeout=10)
    assert r.status_code == 404 and "error" in r.json()
    assert httpx.get(server.url + "/health", timeout=10).json()["status"] == "ok"


def test_the_openai_client_raises_bad_request(server):
    with pytest.raises(openai.BadRequestError) as e:
        client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=10_000)
    assert e.value.body["code"] == "context_length_exceeded"


def _slow_served(slots=2):
    model = SlowModel(tiny_model(max_seq=128).cfg)
    model.load_state_dict(tiny_model(max_seq=128).state_dict())
    return served("slow", model=model.eval(), slots=slots)


def _wait(predicate, timeout=20.0):
    deadline = time.time() + timeout
    while not predicate():
        if time.time() > deadline:
            return False
        time.sleep(0.05)
    return True


def test_a_client_gone_mid_stream_frees_its_slot():
    with Server(_app(models=[_slow_served()])) as s:
        health = lambda: httpx.get(s.url + "/health", timeout=10).json()  # noqa: E731
        body = {"model": "slow", "messages": HELLO, "max_tokens": 100, "temperature": 0, "stream": True}
        with httpx.stream("POST", s.url + CHAT, json=body, timeout=30) as r:
            lines = r.iter_lines()
            got = [next(lines) for _ in range(6)]
            assert any(g.startswith("data: {") for g in got)
            assert health()["models"]["slow"]["running"] == 1
        # the connection is closed: the request is cancelled and its slot freed at once
        assert _wait(lambda: health()["models"]["slow"]["running"] == 0 and health()["in_flight"] == 0)
        ok = client(s).chat.completions.create(model="slow", messages=HELLO, max_tokens=2)
        assert ok.usage.completion_tokens >= 1


def test_the_request_limit_answers_429():
    with Server(_app(models=[_slow_served()], max_requests=1)) as s:
        body = {"model": "slow", "messages": HELLO, "max_tokens": 60, "stream": True}
        with httpx.stream("POST", s.url + CHAT, json=body, timeout=30) as r:
            lines = r.iter_lines()  # (held: a dropped iterator closes the connection)
            assert next(lines).startswith("data: {")
            with pytest.raises(openai.RateLimitError) as e:
                client(s).chat.completions.create(model="slow", messages=HELLO, max_tokens=2)
            assert e.value.body["code"] == "rate_limit_exceeded"
        assert _wait(lambda: httpx.get(s.url + "/health", timeout=10).json()["in_flight"] == 0)
        assert client(s).chat.completions.create(model="slow", messages=HELLO, max_tokens=2).choices


def test_api_key_is_a_bearer_token():
    with Server(_app(api_key="s3cret")) as s:
        with pytest.raises(openai.AuthenticationError):
            client(s, api_key="wrong").models.list()
        assert httpx.get(s.url + "/v1/models", timeout=10).status_code == 401
        assert [m.id for m in client(s, api_key="s3cret").models.list().data] == ["tiny"]
        assert httpx.get(s.url + "/health", timeout=10).status_code == 200  # health and the page stay open
        assert httpx.get(s.url + "/", timeout=10).status_code == 200


def test_utf8_is_never_split_across_chunks():
    """A byte-level model that spells multi-byte characters one byte per token: every streamed
    piece is whole characters, and the pieces join to the text."""
    from transformer_toolkit import ByteLevelTokenizer, Transformer
    from transformer_toolkit.serve.models import ServedModel
    from transformer_toolkit.sft import ChatTemplate

    text = "naïve café — 😀 ok"
    script = list(text.encode("utf-8"))

    class Scripted(Transformer):
        def forward(self, tokens, cache=None, start_pos=0, logits_to_keep=0, **kw):
            n = int(start_pos) + tokens.shape[1]  # the position after the last input
            logits = torch.zeros(tokens.shape[0], tokens.shape[1], self.cfg.vocab_size)
            i = n - self.prompt_len
            logits[..., script[i] if 0 <= i < len(script) else 3] = 10.0  # then EOS (id 3)
            return logits, torch.zeros(())

    from model_helpers import tiny_config

    class BytesWithEos(ByteLevelTokenizer):
        eos_id = 3  # byte 0x03 (ETX) ends a reply here: the script never spells it

    tok = BytesWithEos()
    model = Scripted(tiny_config(vocab_size=tok.vocab_size, max_seq=256)).eval()
    prompt_ids = len(tok.encode("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"))
    model.prompt_len = prompt_ids
    sm = ServedModel("bytes", model, tok, ChatTemplate("chatml"), slots=1)
    from transformer_toolkit.serve.app import create_app

    with Server(create_app([sm])) as s:
        pieces = [c.choices[0].delta.content for c in client(s).chat.completions.create(
            model="bytes", messages=[{"role": "user", "content": "hi"}], max_tokens=60, stream=True) if c.choices]
    pieces = [p for p in pieces if p]
    assert "".join(pieces) == text and len(pieces) > 5
    assert not any("\ufffd" in p for p in pieces)

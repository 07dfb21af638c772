"""A tiny served model and a real uvicorn server on a free loopback port, for the serving tests."""

from __future__ import annotations

import functools
import random
import socket
import threading
import time

import torch
from model_helpers import tiny_config

from transformer_toolkit.model import Transformer
from transformer_toolkit.sft import ChatTemplate
from transformer_toolkit.tokenizer import RustBPETokenizer

uvicorn = __import__("pytest").importorskip("uvicorn")
__import__("pytest").importorskip("fastapi")


@functools.cache
def tokenizer() -> RustBPETokenizer:
    rng = random.Random(0)
    words = "what is python a language how do i reverse list use my or be brief add sum café naïve".split()
    lines = [" ".join(rng.choice(words) for _ in range(8)) + "\n" for _ in range(300)]
    return RustBPETokenizer().train(lines + [str(i) for i in range(100)], vocab_size=360)


def tiny_model(max_seq: int = 128, seed: int = 0, **kw) -> Transformer:
    """Untrained, with spread-out logits (a scaled, untied head) so greedy answers have no near-ties."""
    torch.manual_seed(seed)
    cfg = tiny_config(vocab_size=tokenizer().vocab_size, max_seq=max_seq, tie_weights=False, init_std=0.05, **kw)
    model = Transformer(cfg).eval()
    with torch.no_grad():
        model.head.weight.mul_(20.0)
    return model


class SlowModel(Transformer):
    """A model whose every forward takes ``delay`` seconds more and which never ends a reply (the
    special tokens, EOS and the closers among them, are never likely): a stream that lasts long
    enough to disconnect from, or to hold a request in flight."""

    delay = 0.05

    def forward(self, *args, **kwargs):
        time.sleep(self.delay)
        logits, aux = super().forward(*args, **kwargs)
        logits[..., :21] = float("-inf")  # the 21 special tokens
        return logits, aux


def served(name="tiny", model=None, slots=4, ctx=None, template="chatml"):
    from transformer_toolkit.serve.models import ServedModel

    return ServedModel(name, model if model is not None else tiny_model(), tokenizer(), ChatTemplate(template),
                       slots=slots, ctx=ctx)


class Server:
    """``app`` served by uvicorn in a thread on a free 127.0.0.1 port (a context manager)."""

    def __init__(self, app):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(timeout=30)
        self.sock.close()


def client(server: Server, **kw):
    import openai

    return openai.OpenAI(base_url=server.url + "/v1", api_key=kw.pop("api_key", "none"), max_retries=0, **kw)

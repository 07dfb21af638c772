"""The batcher's thread: many concurrent requests, each answered as if alone; cancellation,
stop ids, seeds and log-probabilities."""

from __future__ import annotations

import queue
import threading

import pytest
import torch
from inference_helpers import model as _model
from inference_helpers import prompts as _prompts

from transformer_toolkit.inference import SamplingParams
from transformer_toolkit.inference.batcher import Batcher, Request


def _collect(batcher: Batcher, request: Request, timeout: float = 60.0):
    q: queue.Queue = queue.Queue()
    ticket = batcher.submit(request, q.put)
    events = []
    while not events or events[-1].finish is None:
        events.append(q.get(timeout=timeout))
    return ticket, events


def test_concurrent_greedy_requests_equal_their_sequential_answers():
    model = _model(attn="gqa", max_seq=64)
    lengths = [3 + (7 * i) % 13 for i in range(28)]
    prompts = _prompts(lengths, seed=5)
    news = [4 + (5 * i) % 11 for i in range(28)]
    want = [model.generate(p, n, temperature=0)[len(p):].tolist() for p, n in zip(prompts, news, strict=True)]
    batcher = Batcher(model, slots=6, max_len=64)
    got = [None] * len(prompts)

    def client(i):
        _, events = _collect(batcher, Request(tuple(prompts[i].tolist()), news[i], SamplingParams(0.0)))
        got[i] = [e.token for e in events]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(len(prompts))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert got == want  # none lost, none mixed with another's


def test_stop_ids_cancel_and_the_slot_is_freed():
    model = _model(attn="gqa", max_seq=64)
    batcher = Batcher(model, slots=2, max_len=64)
    p = _prompts([6])[0]
    greedy = model.generate(p, 10, temperature=0)[6:].tolist()
    _, events = _collect(batcher, Request(tuple(p.tolist()), 10, SamplingParams(0.0), frozenset({greedy[3]})))
    stop_at = greedy.index(greedy[3])
    assert [e.token for e in events] == greedy[:stop_at + 1] and events[-1].finish == "stop"
    q: queue.Queue = queue.Queue()
    ticket = batcher.submit(Request(tuple(p.tolist()), 50, SamplingParams(0.0)), q.put)
    assert q.get(timeout=30).finish is None
    ticket.cancel()
    while (e := q.get(timeout=30)).finish is None:
        pass
    assert e.finish == "cancelled" and batcher.load()["running"] == 0
    _, events = _collect(batcher, Request(tuple(p.tolist()), 10, SamplingParams(0.0)))
    assert [e.token for e in events] == greedy and events[-1].finish == "length"
    assert events[0].reused > 0  # the freed slot kept the prompt
    with pytest.raises(ValueError, match="exceed the context"):
        batcher.submit(Request(tuple(range(60)), 5), print)
    batcher.close()


def test_seeded_sampling_and_logprobs():
    model = _model(attn="mha", pos_enc="alibi", max_seq=64)
    batcher = Batcher(model, slots=4, max_len=64)
    p = tuple(_prompts([5])[0].tolist())
    sampled = Request(p, 8, SamplingParams(1.0, top_k=20), seed=7, logprobs=3)
    _, a = _collect(batcher, sampled)
    _, b = _collect(batcher, sampled)
    assert [e.token for e in a] == [e.token for e in b]
    seq = torch.tensor(p + tuple(e.token for e in a))
    with torch.no_grad():
        lp = torch.log_softmax(model(seq[None])[0][0].float(), -1)
    for i, e in enumerate(a):
        row = lp[len(p) - 1 + i]
        assert e.logprob == pytest.approx(float(row[e.token]), abs=1e-4)
        assert [t for t, _ in e.top] == row.topk(3).indices.tolist()
    batcher.close()

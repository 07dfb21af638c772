"""Continuous batching: one background thread decodes every running request together.

Requests arrive from any thread (``submit``). The batcher's thread loops: it frees the slots of
cancelled requests, admits waiting requests into free slots (prefilling each; at most
``prefill_budget`` prompt tokens per round, so running streams are not held up for long), then
runs one decode step over every running request at once, each at its own position
(``Engine.decode``), samples each request's token with its own settings, and hands the tokens
out. A request that stops, reaches its length or is cancelled leaves its slot at once; the slot
keeps its cached prefix for the next request that shares it.

Events go to the callback the request was submitted with, called on the batcher's thread (a
server passes one that hands them to its event loop): ``Event(token, ...)`` per new token, the
last one with ``finish`` set ("stop": a stop id, which is the event's token; "length": the
request's ``max_new`` or the slot's length), or ``Event(None, finish="cancelled"|"error")``.
"""

from __future__ import annotations

import threading
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from ..model.kernels import decode_kernels
from .engine import Engine
from .sampling import SamplingParams, logprobs, sample_rows


@dataclass(frozen=True)
class Request:
    """What to generate: after the prompt ``ids``, up to ``max_new`` tokens sampled with
    ``params``, stopping at any of ``stop_ids``. ``seed`` makes sampling reproducible (its own
    generator); ``logprobs``: None, or how many of the most likely tokens to report with each
    token's own log-probability (0: only its own)."""

    ids: tuple[int, ...]
    max_new: int
    params: SamplingParams = SamplingParams()
    stop_ids: frozenset[int] = frozenset()
    seed: int | None = None
    logprobs: int | None = None


@dataclass
class Event:
    token: int | None
    logprob: float | None = None
    top: list[tuple[int, float]] | None = None
    finish: str | None = None
    reused: int = 0  # prompt tokens taken from the cache (set on the first event)
    error: str | None = None


@dataclass(eq=False)
class Ticket:
    """A submitted request: ``cancel()`` stops it (its slot is freed at the next round)."""

    request: Request
    emit: Callable[[Event], None]
    batcher: Batcher
    generator: torch.Generator | None = None
    slot: int | None = None
    last: int = 0  # the token to feed next
    produced: int = 0
    reused: int = 0
    cancelled: bool = field(default=False)

    def cancel(self) -> None:
        self.cancelled = True
        self.batcher._wake()


class Batcher:
    """Serves ``Request``s on ``model`` with ``slots`` cache rows of ``max_len`` positions."""

    def __init__(self, model, slots: int = 8, max_len: int | None = None, prefill_budget: int = 512):
        self.model = model.eval()
        self.max_len = min(max_len or model.cfg.max_seq, model.cfg.max_seq)
        self.engine = Engine.create(model, slots, self.max_len)
        self.prefill_budget = prefill_budget
        self._cond = threading.Condition()
        self._waiting: deque[Ticket] = deque()
        self._running: dict[int, Ticket] = {}  # slot -> ticket
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="ttk-batcher", daemon=True)
        self._thread.start()

    # any thread ------------------------------------------------------------------------------
    def submit(self, request: Request, emit: Callable[[Event], None]) -> Ticket:
        """Queue ``request``; its events go to ``emit`` (called on the batcher's thread)."""
        if not request.ids:
            raise ValueError("a request needs at least one prompt token")
        if len(request.ids) + request.max_new > self.max_len:
            raise ValueError(f"{len(request.ids)} prompt tokens + {request.max_new} new ones exceed the context "
                             f"of {self.max_len} tokens")
        gen = None
        if request.seed is not None:
            gen = torch.Generator(device=self.engine.device).manual_seed(request.seed)
        ticket = Ticket(request, emit, self, gen)
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            self._waiting.append(ticket)
            self._cond.notify()
        return ticket

    def load(self) -> dict:
        """``{"running", "waiting", "slots"}``: how busy the batcher is."""
        with self._cond:
            waiting = len(self._waiting)
        return {"running": len(self._running), "waiting": waiting, "slots": self.engine.slots}

    def close(self) -> None:
        """Stop the thread; requests still queued or running end with finish "cancelled"."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _wake(self) -> None:
        with self._cond:
            self._cond.notify()

    # the batcher's thread ----------------------------------------------------------------------
    def _busy(self) -> bool:
        with self._cond:
            return not self._closed and bool(self._waiting or self._running)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not (self._closed or self._waiting or self._running):
                    self._cond.wait()
                if self._closed:
                    break
            try:
                # the decode weight layout is entered once per busy spell, not per round
                with torch.inference_mode(), decode_kernels(self.model):
                    while self._busy():
                        self._round()
            except Exception as e:  # noqa: BLE001 - report to every request, keep serving
                traceback.print_exc()
                self._fail_all(f"{type(e).__name__}: {e}")
        with self._cond:
            left = [*self._running.values(), *self._waiting]
        for ticket in left:
            _send(ticket, Event(None, finish="cancelled"))

    def _fail_all(self, message: str) -> None:
        """After an error inside a round: every request ends with it and the engine starts clean."""
        with self._cond:
            tickets = [*self._running.values(), *self._waiting]
            self._waiting.clear()
        self._running.clear()
        self.engine.reset()
        for ticket in tickets:
            _send(ticket, Event(None, finish="error", error=message))

    def _finish(self, ticket: Ticket, event: Event) -> None:
        if ticket.slot is not None and self._running.pop(ticket.slot, None) is not None:
            self.engine.release(ticket.slot)
        _send(ticket, event)

    def _round(self) -> None:
        for ticket in [t for t in self._running.values() if t.cancelled]:
            self._finish(ticket, Event(None, finish="cancelled"))
        self._admit()
        if not self._running:
            return
        slots = self.engine.active_slots()
        tickets = [self._running[s] for s in slots]
        logits = self.engine.decode(torch.tensor([t.last for t in tickets]))
        self._emit_tokens(tickets, logits)

    def _admit(self) -> None:
        budget = self.prefill_budget
        while self.engine.active < self.engine.slots:
            with self._cond:
                if not self._waiting or (budget <= 0 and self._running):
                    return
                ticket = self._waiting.popleft()
            if ticket.cancelled:
                _send(ticket, Event(None, finish="cancelled"))
                continue
            ids = torch.tensor(ticket.request.ids, dtype=torch.long)
            ticket.slot, logits, ticket.reused = self.engine.admit(ids)
            self._running[ticket.slot] = ticket  # (only this thread changes _running)
            budget -= len(ticket.request.ids) - ticket.reused
            self._emit_tokens([ticket], logits[None])

    def _emit_tokens(self, tickets: list[Ticket], logits: torch.Tensor) -> None:
        reqs = [t.request for t in tickets]
        chosen = sample_rows(logits, [r.params for r in reqs], [t.generator for t in tickets])
        wanted = [i for i, r in enumerate(reqs) if r.logprobs is not None]
        lps = {}
        if wanted:
            top = max(reqs[i].logprobs for i in wanted)
            own, values, ids = logprobs(logits[wanted], chosen[wanted], top)
            for j, i in enumerate(wanted):
                k = reqs[i].logprobs
                lps[i] = (float(own[j]), list(zip(ids[j, :k].tolist(), values[j, :k].tolist(), strict=True)))
        for i, (ticket, token) in enumerate(zip(tickets, chosen.tolist(), strict=True)):
            ticket.last, ticket.produced = token, ticket.produced + 1
            lp, top = lps.get(i, (None, None))
            event = Event(token, lp, top, reused=ticket.reused if ticket.produced == 1 else 0)
            if token in ticket.request.stop_ids:
                event.finish = "stop"
            elif ticket.produced >= ticket.request.max_new:
                event.finish = "length"
            if event.finish:
                self._finish(ticket, event)
            else:
                _send(ticket, event)


def _send(ticket: Ticket, event: Event) -> None:
    """Hand ``event`` to the request's callback; a callback that fails cancels the request
    (its reader is gone) instead of failing the round of every request."""
    try:
        ticket.emit(event)
    except Exception:  # noqa: BLE001
        ticket.cancelled = True

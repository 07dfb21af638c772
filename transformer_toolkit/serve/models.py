"""A model the server serves: weights, tokenizer, chat template and its own batcher.

Each served model has its own ``Batcher`` (its own cache slots and decode thread), so two models
loaded side by side answer at the same time. A request's choices become batcher requests whose
events come back, through the event loop, onto one queue per HTTP request (``Choices``), where
each choice's tokens turn into text with ``TextStream``: never half a UTF-8 character, and
cut before the first stop string.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from ..inference import TextStream
from ..inference.batcher import Batcher, Event, Request
from ..sft.chat import chat_stop_ids, encode_chat
from .protocol import ApiError, Job


class ServedModel:
    """``model`` served as ``name``: ``slots`` requests decode together, each within ``ctx``
    positions (default: the model's ``max_seq``)."""

    def __init__(self, name: str, model, tokenizer, template, slots: int = 8, ctx: int | None = None):
        self.name, self.model, self.tokenizer, self.template = name, model, tokenizer, template
        self.ctx = min(ctx or model.cfg.max_seq, model.cfg.max_seq)
        self.batcher = Batcher(model, slots=slots, max_len=self.ctx)
        self.created = int(time.time())
        eos = getattr(tokenizer, "eos_id", None)
        self.chat_stops = frozenset(chat_stop_ids(template, tokenizer))
        self.text_stops = frozenset() if eos is None else frozenset({eos})
        self.closer = template.assistant_closer.strip()

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "transformer-toolkit",
                "context_length": self.ctx}

    def prompt_ids(self, job: Job) -> list[int]:
        if job.chat:
            return encode_chat(self.template, self.tokenizer, job.messages)
        if isinstance(job.prompt, str):
            return self.tokenizer.encode(job.prompt)
        vocab = self.model.cfg.vocab_size
        if any(not 0 <= t < vocab for t in job.prompt):
            raise ApiError(400, f"prompt token ids must be in [0, {vocab})", "prompt")
        return list(job.prompt)

    def budget(self, job: Job, n_prompt: int) -> int:
        """The request's ``max_tokens``, checked against the context (what is left when unset)."""
        if n_prompt >= self.ctx:
            raise ApiError(400, f"the prompt has {n_prompt} tokens; this model's context is {self.ctx} tokens "
                                "(shorten the messages)", "messages" if job.chat else "prompt",
                           "context_length_exceeded")
        left = self.ctx - n_prompt
        if job.max_tokens is None:
            return left
        if job.max_tokens > left:
            raise ApiError(400, f"max_tokens={job.max_tokens} with a prompt of {n_prompt} tokens exceeds the "
                                f"context of {self.ctx} tokens (at most {left})", "max_tokens",
                           "context_length_exceeded")
        return job.max_tokens

    def start(self, job: Job, prompt: list[int], max_new: int, loop: asyncio.AbstractEventLoop) -> Choices:
        """Submit the job's ``n`` choices; their events arrive on the returned ``Choices``."""
        choices = Choices(self, job, len(prompt))
        stops = self.chat_stops if job.chat else self.text_stops
        for i in range(job.n):
            request = Request(tuple(prompt), max_new, job.params, stops,
                              None if job.seed is None else job.seed + i, job.logprobs)

            def emit(event: Event, i=i) -> None:  # on the batcher's thread
                loop.call_soon_threadsafe(choices.queue.put_nowait, (i, event))

            choices.tickets.append(self.batcher.submit(request, emit))
        return choices


@dataclass
class Choice:
    text: TextStream
    tokens: int = 0
    finish: str | None = None
    logprobs: list[tuple[int, float, list]] = field(default_factory=list)  # (token, logprob, top)


class Choices:
    """The ``n`` choices of one HTTP request and the queue their events arrive on."""

    def __init__(self, served: ServedModel, job: Job, n_prompt: int):
        self.served, self.job, self.n_prompt = served, job, n_prompt
        self.queue: asyncio.Queue = asyncio.Queue()
        self.tickets: list = []
        stops = job.stop + ([served.closer] if job.chat and served.closer else [])
        self.choices = [Choice(TextStream(served.tokenizer, stops, skip_special_tokens=True)) for _ in range(job.n)]

    def done(self) -> bool:
        return all(c.finish is not None for c in self.choices)

    def cancel(self) -> None:
        for ticket in self.tickets:
            ticket.cancel()

    def completion_tokens(self) -> int:
        return sum(c.tokens for c in self.choices)

    async def next(self) -> tuple[int, str, list, str | None]:
        """The next event of any choice as ``(index, new text, new logprob entries, finish)``."""
        i, event = await self.queue.get()
        choice = self.choices[i]
        if choice.finish is not None:  # a choice that ended at a stop string: later events are moot
            return i, "", [], None
        if event.finish == "error":
            self.cancel()
            raise ApiError(500, f"generation failed: {event.error}", kind="server_error")
        piece, entries = "", []
        if event.token is not None:
            choice.tokens += 1
            if event.finish != "stop":  # a stop id ends the text and is not shown
                piece = choice.text.push(event.token)
                if event.logprob is not None:
                    entries = [(event.token, event.logprob, event.top)]
                    choice.logprobs += entries
        finish = event.finish
        if choice.text.stopped and finish is None:
            self.tickets[i].cancel()  # a stop string: the slot is freed at the next round
            finish = "stop"
        if finish is not None:
            piece += choice.text.finish()
            finish = "stop" if finish == "cancelled" else finish
            choice.finish = finish
        return i, piece, entries, finish

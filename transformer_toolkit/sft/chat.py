"""Chatting with a model: history, a system prompt, the template's prompt, stop on the closer.

>>> session = ChatSession(model, tok, template="chatml", system="Be brief.")   # doctest: +SKIP
>>> session.ask("What is 2 + 3?", temperature=0)                               # doctest: +SKIP
'5'
>>> for piece in session.ask_stream("And 4 + 4?"):                              # doctest: +SKIP
...     print(piece, end="", flush=True)

The prompt is built exactly as training rendered conversations: the template's text with the
assistant header appended, encoded as one string, with the tokenizer's BOS id first when the
template has one. Generation stops at the assistant closer's special token or EOS.

Each turn reuses the previous turn's KV cache (``inference.PromptCache``): the conversation
so far is re-rendered and re-encoded, but only the tokens after the prefix it shares with what
was cached (in practice the new question and, where the reply re-encodes differently, the
reply's tail) go through the model again.
"""

from __future__ import annotations

from collections.abc import Iterator

from ..inference import PromptCache, SamplingParams, TextStream, check_text, stream
from ..tokenizer.templates import ChatTemplate


def encode_chat(template: ChatTemplate, tokenizer, messages: list[dict]) -> list[int]:
    """The prompt ids of ``messages`` plus the assistant header: the template's text encoded as
    one string (as training rendered it), the tokenizer's BOS id first when the template has one."""
    text, _ = template.format_messages(messages, add_generation_prompt=True, bos=False)
    ids = tokenizer.encode(text)
    bos = getattr(tokenizer, "bos_id", None)
    if template.bos_token and bos is not None:
        ids = [bos] + ids
    return ids


def chat_stop_ids(template: ChatTemplate, tokenizer) -> list[int]:
    """EOS plus the assistant closer's token when it is a single special token."""
    ids = []
    eos = getattr(tokenizer, "eos_id", None)
    if eos is not None:
        ids.append(eos)
    closer = template.assistant_closer.strip()
    if closer:
        enc = tokenizer.encode(closer)
        if len(enc) == 1:
            ids.append(enc[0])
    return ids


class ChatSession:
    """A multi-turn conversation with ``model``. ``history`` holds the user/assistant messages."""

    def __init__(self, model, tokenizer, template: str | ChatTemplate = "chatml", system: str | None = None,
                 max_new: int = 200, temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                 compile: bool = False):
        SamplingParams(temperature, top_k, top_p)  # checked now, not at the first question
        if max_new < 0:
            raise ValueError(f"max_new must be >= 0, got {max_new}")
        self.model, self.tokenizer = model, tokenizer
        self.template = template if isinstance(template, ChatTemplate) else ChatTemplate(template)
        self.system = system
        self.history: list[dict] = []
        self._start = 0  # history[_start:] is in the window: older exchanges no longer fit the context
        # compile: decode with a compiled step (generation.generate); worth it for long sessions
        self.defaults = dict(max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p, compile=compile)
        # the last turn's KV cache: a turn prefills only what follows the earlier turns' tokens
        self.prompt_cache = PromptCache()

    def reset(self) -> None:
        """Forget the conversation (the system prompt stays)."""
        self.history, self._start = [], 0
        self.prompt_cache.clear()

    def messages(self, prompt: str, start: int = 0) -> list[dict]:
        """The system message, ``history[start:]`` and ``prompt`` as the new user message."""
        system = [{"role": "system", "content": self.system}] if self.system else []
        return system + self.history[start:] + [{"role": "user", "content": prompt}]

    def prompt_ids(self, messages: list[dict], room: int) -> list[int]:
        """Token ids of the conversation plus the assistant header, short enough that ``room`` new
        tokens still fit in the model's context (the prompt may use at least half of it; a longer
        reply then slides the window).

        When the conversation is too long, whole exchanges are dropped, oldest first, keeping the
        system message, so the model sees conversations that start the way training ones did.
        Only when the system message and the last question alone are too long are the oldest
        tokens cut. (A chat turn drops more at once, so the next turns can reuse its cache: see
        ``_turn_ids``.)"""
        return self._fit(messages, room, shrink=False)[0]

    def _fit(self, messages: list[dict], room: int, shrink: bool) -> tuple[list[int], int]:
        """``(ids, how many messages after the system message were dropped)``. ``shrink``: once
        anything must be dropped, drop down to half the budget (see ``_turn_ids``)."""
        max_seq = self.model.cfg.max_seq
        keep = max(max_seq // 2, max_seq - room)
        system = messages[:1] if messages and messages[0]["role"] == "system" else []
        turns = messages[len(system):]
        ids = self._encode(system + turns)
        target = keep // 2 if shrink and len(ids) > keep else keep
        while True:
            later_user = [i for i, m in enumerate(turns) if i > 0 and m["role"] == "user"]
            if len(ids) <= target or not later_user or (len(later_user) == 1 and len(ids) <= keep):
                # (the newest exchange stays whenever it fits: the next question may build on it)
                return ids[-keep:], len(messages) - len(system) - len(turns)
            turns = turns[later_user[0]:]  # drop the oldest exchange: a question and its replies
            ids = self._encode(system + turns)

    def _turn_ids(self, prompt: str, room: int) -> list[int]:
        """The prompt of the next turn. The conversation's window starts at ``history[_start]``
        and stays there while the prompt fits, so each turn's prompt extends the previous one and
        the prompt cache holds all of it but the new question. When it no longer fits, the
        window moves past as many old exchanges as it takes to use at most half the prompt
        budget, keeping the newest exchange if it fits. Dropping only as many as needed would
        move the prompt's start, and so miss the cache, at every turn from then on."""
        start = self._start if self._start <= len(self.history) else 0  # 0: the history was cut by hand
        while start < len(self.history) and self.history[start]["role"] != "user":
            start += 1  # the history was edited by hand: start at an exchange
        ids, dropped = self._fit(self.messages(prompt, start), room, shrink=True)
        self._start = start + dropped
        return ids

    def _encode(self, messages: list[dict]) -> list[int]:
        return encode_chat(self.template, self.tokenizer, messages)

    def stop_ids(self) -> list[int]:
        """EOS plus the assistant closer's token when it is a single special token."""
        return chat_stop_ids(self.template, self.tokenizer)

    def ask_stream(self, prompt: str, **overrides) -> Iterator[str]:
        """Yield the reply's text piece by piece; the reply joins the history when done. A reply
        cut short (the stream closed early, or Ctrl-C while generating) joins it as far as it
        was shown, if anything was."""
        opts = self.defaults | overrides
        check_text(prompt, "message")
        if self.system is not None:
            check_text(self.system, "system prompt")
        ids = self._turn_ids(prompt, opts["max_new"])  # stream puts them on the model's device
        stops, closer = set(self.stop_ids()), self.template.assistant_closer.strip()
        # the closer as text too: a byte-level tokenizer spells it in pieces
        text = TextStream(self.tokenizer, stops=[closer] if closer else [])
        finished = False
        try:
            for tok in stream(self.model, ids, stop_ids=stops, prompt_cache=self.prompt_cache, **opts):
                t = int(tok)
                if t in stops:
                    break
                piece = text.push(t)  # `text.text` grows first: the reader may stop at the yield
                if piece:
                    yield piece
                if text.stopped:
                    break
            piece = text.finish()
            if piece:
                yield piece
            finished = True
        finally:
            reply = text.text.strip()
            if finished or reply:
                self.history += [{"role": "user", "content": prompt}, {"role": "assistant", "content": reply}]

    def ask(self, prompt: str, **overrides) -> str:
        """The model's reply to ``prompt`` (added to the history with the prompt)."""
        for _ in self.ask_stream(prompt, **overrides):
            pass
        return self.history[-1]["content"]

"""Text in, text out: ``complete`` a prompt, and ``TextStream``, the text of tokens as they come.

A token is not a piece of text: byte-level BPE splits a multi-byte character over several
tokens, and some decoders change how a token reads depending on what precedes it (a leading
space dropped at the start). ``TextStream`` therefore decodes a short run of recent ids, with
one earlier piece as context, and hands out only the text that follows the context; it waits
while the decoded text ends in half a character (U+FFFD), so a stream never splits one.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from numbers import Integral

import torch

from .decoding import generate
from .sampling import SamplingParams, sample


class TextStream:
    """The text of a growing sequence of token ids, in pieces safe to show.

    ``push(id)`` returns the new text it can show now (often "", while a character is
    incomplete or while the text might be the start of a stop string), ``finish()`` the rest
    at the end. With ``stops`` (strings), the text ends before the first one that appears,
    which is never shown, even in part; ``stopped`` then turns True and later pushes return "".
    ``text`` is everything shown so far.
    """

    def __init__(self, tokenizer, stops: Sequence[str] = (), skip_special_tokens: bool = False):
        self.tokenizer, self.skip = tokenizer, skip_special_tokens
        self.stops = [s for s in stops if s]
        self.ids: list[int] = []
        self.prefix = self.read = 0  # ids[prefix:read]: the context of the next decode
        self.held = ""  # decoded, not shown: it may be the start of a stop string
        self.text = ""
        self.stopped = False

    def _decode(self, ids: list[int]) -> str:
        return self.tokenizer.decode(ids, skip_special_tokens=self.skip)

    def _new_text(self, final: bool) -> str:
        new = self._decode(self.ids[self.prefix:])
        if new.endswith("\ufffd") and not final:
            return ""  # half of a multi-byte character: wait for the rest
        old = self._decode(self.ids[self.prefix:self.read])
        self.prefix, self.read = self.read, len(self.ids)
        return new[len(old):]

    def push(self, token_id: int) -> str:
        """Add one token id; the text that can be shown now."""
        if self.stopped:
            return ""
        self.ids.append(int(token_id))
        return self._show(self._new_text(final=False), final=False)

    def finish(self) -> str:
        """The text still held back at the end of the stream: the start of a stop string that
        never completed, or bytes that never completed a character (shown as U+FFFD, as a
        plain decode of the ids shows them)."""
        if self.stopped:
            return ""
        return self._show(self._new_text(final=True), final=True)

    def _show(self, piece: str, final: bool) -> str:
        buf = self.held + piece
        cut = min((i for i in (buf.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.held, self.stopped = buf[:cut], "", True
        elif final:
            out, self.held = buf, ""
        else:
            keep = max((k for s in self.stops for k in range(min(len(s) - 1, len(buf)), 0, -1)
                        if buf.endswith(s[:k])), default=0)
            out, self.held = buf[:len(buf) - keep], buf[len(buf) - keep:]
        self.text += out
        return out


def check_text(text: str, what: str = "prompt") -> None:
    """ValueError unless ``text`` is a string of real characters. A lone surrogate cannot be
    encoded: it is what a command line turns a byte that is not UTF-8 into (``$'\\xff'``), or what
    a JSON ``"\\ud800"`` escape decodes to, and the tokenizer would fail on it with a TypeError."""
    if not isinstance(text, str):
        raise ValueError(f"the {what} must be text (str), got {type(text).__name__}")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        bad = text[e.start]
        raw = f" (the byte 0x{ord(bad) - 0xDC00:02x}, which is not UTF-8)" if 0xDC80 <= ord(bad) <= 0xDCFF else ""
        raise ValueError(f"the {what} is not valid text: character {e.start} is a lone surrogate "
                         f"U+{ord(bad):04X}{raw}; give UTF-8 text") from None


def heal_trailing_space(tokenizer, prompt: str) -> tuple[list[int], list[int] | None]:
    """The ids to condition on for a text prompt, and the ids allowed as the first new token.

    Byte-level BPE attaches a space to the word after it (``" name"`` is one token), so a prompt
    that ends in spaces, such as ``"def "``, ends in a lone space token that the model has rarely
    seen before a word, and the completion tends to start with a second space. This drops the
    trailing spaces and tabs from the prompt and allows as first token only the ids whose text
    starts with them (special tokens excluded), which is where the model saw such text in
    training. Returns ``(ids, None)`` when the prompt has no trailing spaces or nothing would be
    left of it."""
    stripped = prompt.rstrip(" \t")
    suffix = prompt[len(stripped):]
    ids = tokenizer.encode(stripped) if stripped else []
    if not suffix or not ids:
        return tokenizer.encode(prompt), None
    allowed = [i for i in range(tokenizer.vocab_size)  # special tokens decode to "" here
               if tokenizer.decode([i], skip_special_tokens=True).startswith(suffix)]
    return (ids, allowed) if allowed else (tokenizer.encode(prompt), None)


def complete(model, tokenizer, prompt: str, max_new: int = 100, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, stop_ids: Iterable[int] | None = None,
             generator: torch.Generator | None = None, compile: bool = False) -> str:
    """The prompt's text followed by a sampled completion (``heal_trailing_space`` applied;
    ``compile`` as in ``generate``). Every setting is checked before anything runs: the first
    token of a healed prompt is sampled here, not by ``generate``."""
    params = SamplingParams(temperature, top_k, top_p)
    if not isinstance(max_new, Integral) or max_new < 0:
        raise ValueError(f"max_new must be an integer >= 0, got {max_new}")
    check_text(prompt)
    ids, allowed = heal_trailing_space(tokenizer, prompt)
    if not ids:
        raise ValueError("the prompt encodes to no tokens; give some text")
    x = torch.tensor(ids, dtype=torch.long, device=next(model.parameters()).device)
    if allowed is not None and max_new > 0:
        was_training = model.training
        model.eval()
        try:
            with torch.inference_mode():
                logits, _ = model(x[-model.cfg.max_seq:].unsqueeze(0), logits_to_keep=1)
        finally:
            model.train(was_training)
        keep = torch.full_like(logits[0, -1], float("-inf"))
        keep[allowed] = 0.0
        first = sample((logits[:, -1] + keep).float(), params, generator)
        x, max_new = torch.cat([x, first]), max_new - 1
        if stop_ids is not None and int(first) in set(stop_ids):
            max_new = 0
    out = generate(model, x, max_new, temperature, top_k, top_p, stop_ids, generator=generator,
                   compile=compile) if max_new else x
    return tokenizer.decode(out.tolist(), skip_special_tokens=True)

"""Samples -> conversations -> token ids and loss masks.

``to_messages`` recognises each sample's schema; ``render`` tokenises a conversation and marks
the trained tokens; ``truncate`` fits it into a row. Trained (mask 1): every assistant turn's
content and closer, and the final EOS. Not trained: BOS, system and user turns, role headers.

The mask comes from token boundaries: the whole text is encoded once (exactly as inference
will encode it) and each token is trained when the character it starts at lies in a trained
span of ``ChatTemplate.format_messages``. Nothing is decoded back to text.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SCHEMAS = ("auto", "messages", "prompt_response", "instruction", "sharegpt")
_SHAREGPT_ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant",
                   "model": "assistant", "bot": "assistant", "chatgpt": "assistant", "system": "system"}


def detect_schema(sample) -> str | None:
    if not isinstance(sample, dict):
        return None
    if isinstance(sample.get("messages"), list):
        return "messages"
    if isinstance(sample.get("conversations"), list):
        return "sharegpt"
    if "instruction" in sample and "output" in sample:
        return "instruction"
    if "prompt" in sample and "response" in sample:
        return "prompt_response"
    return None


def to_messages(sample, index: int = 0, schema: str = "auto") -> list[dict]:
    """One sample of any supported schema as a list of ``{"role", "content"}`` messages."""
    found = detect_schema(sample)
    keys = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
    if schema != "auto" and found is not None and found != schema:
        raise ValueError(f"sample {index} is {found!r}, not schema={schema!r} (keys: {keys}); "
                         "use schema='auto' to detect it per sample")
    if found is None:
        raise ValueError(f"sample {index} has an unrecognised schema (keys: {keys}); expected one of: "
                         "'messages' [{role, content}], 'prompt' + 'response', 'instruction' (+ 'input') + "
                         "'output' (Alpaca), or 'conversations' [{from, value}] (ShareGPT)")
    if found == "messages":
        return [dict(role=m.get("role"), content=m.get("content")) if isinstance(m, dict) else m
                for m in sample["messages"]]
    if found == "sharegpt":
        msgs = []
        for j, turn in enumerate(sample["conversations"]):
            who = turn.get("from") if isinstance(turn, dict) else None
            if who not in _SHAREGPT_ROLES:
                raise ValueError(f"sample {index}, turn {j}: ShareGPT 'from' must be one of "
                                 f"{', '.join(_SHAREGPT_ROLES)}, got {who!r}")
            msgs.append({"role": _SHAREGPT_ROLES[who], "content": turn.get("value")})
        return msgs
    system = sample.get("system")
    msgs = [{"role": "system", "content": system}] if system else []
    if found == "instruction":
        user = sample["instruction"] + (f"\n\n{sample['input']}" if sample.get("input") else "")
        return msgs + [{"role": "user", "content": user}, {"role": "assistant", "content": sample["output"]}]
    return msgs + [{"role": "user", "content": sample["prompt"]}, {"role": "assistant", "content": sample["response"]}]


@dataclass
class Rendered:
    ids: np.ndarray  # int64 (n,)
    mask: np.ndarray  # bool (n,): True where the token is a training target

    def __len__(self) -> int:
        return len(self.ids)


def render(messages: list[dict], tokenizer, template, add_eos: bool = True, train_from: int = 0) -> Rendered:
    """Token ids and the loss mask of one conversation: the tokenizer's BOS first when the
    template starts with one (and the tokenizer has one), EOS after a final assistant turn.
    ``train_from``: no token starting before this character of the text is trained (DPO trains
    the response, not earlier assistant turns of its prompt)."""
    text, spans = template.format_messages(messages, bos=False)
    ids, offsets = tokenizer.encode_with_offsets(text)
    trained = np.zeros(len(text) + 1, dtype=bool)
    for a, b in spans:
        trained[max(a, train_from):b] = True
    starts = np.fromiter((o[0] for o in offsets), dtype=np.int64, count=len(offsets))
    mask = trained[starts] if len(ids) else np.zeros(0, dtype=bool)
    ids = np.asarray(ids, dtype=np.int64)
    bos = getattr(tokenizer, "bos_id", None)
    if template.bos_token and bos is not None:  # the id itself, whatever the tokenizer calls it
        ids, mask = np.insert(ids, 0, bos), np.insert(mask, 0, False)
    eos = getattr(tokenizer, "eos_id", None)
    if add_eos and eos is not None and messages and messages[-1].get("role") == "assistant":
        ids, mask = np.append(ids, eos), np.append(mask, True)
    return Rendered(ids, mask)


# Tokens encoded past ``max_tokens`` before a long message is known not to fit; a cut inside
# one word can change the last few tokens before the cut, never these many.
MARGIN = 64
CHARS_PER_TOKEN = 8  # the first guess of how many characters give one token (doubled until enough)


def truncate(messages: list[dict], tokenizer, template, max_tokens: int, strategy: str) -> Rendered | None:
    """Fit a conversation into ``max_tokens`` ids; None when no trained token would remain.

    ``"token"`` keeps the first ``max_tokens`` ids. ``"turn"`` drops whole user+assistant
    exchanges from the end (keeping any system message) until the rest fits, so an assistant
    reply is never cut mid-way; when not even the first exchange fits, the sample is dropped.

    A message far longer than a row (a 4 MB paste) is cut before the conversation is rendered,
    so the text, ids and offsets held stay proportional to ``max_tokens``, not to the message.
    """
    if strategy not in ("token", "turn"):
        raise ValueError(f"truncation_strategy must be 'token' or 'turn', got {strategy!r}")
    messages, cut = _cut_long_message(messages, tokenizer, template, max_tokens)
    ends = [i + 1 for i, m in enumerate(messages) if m.get("role") == "assistant"]
    if cut is None:
        full = render(messages, tokenizer, template)
        if len(full) <= max_tokens:
            return full if full.mask.any() else None
    if strategy == "token":
        full = render(messages, tokenizer, template) if cut is not None else full
        out = Rendered(full.ids[:max_tokens], full.mask[:max_tokens])
        return out if out.mask.any() else None
    # "turn": whole exchanges only; with a cut message, those that end before it
    candidates = [e for e in ends if cut is None or e <= cut]
    for end in reversed(candidates[:-1] if cut is None and ends and ends[-1] == len(messages) else candidates):
        out = render(messages[:end], tokenizer, template)
        if len(out) <= max_tokens:
            return out if out.mask.any() else None
    return None


def _cut_long_message(messages: list[dict], tokenizer, template, max_tokens: int) -> tuple[list[dict], int | None]:
    """``(messages, None)`` when every message is short enough to render whole; else, for the
    first message that alone takes the conversation past ``max_tokens + MARGIN`` tokens,
    ``(the messages up to it with its content cut to a prefix that already does so, its index)``.
    The prefix grows from ``CHARS_PER_TOKEN`` characters per token, doubling, and ends at a
    whitespace where it can (the ids before a cut there are those of the whole text)."""
    need = max_tokens + MARGIN
    for i, m in enumerate(messages):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, str) or len(content) <= need * CHARS_PER_TOKEN:
            continue
        size = need * CHARS_PER_TOKEN
        while size < len(content):
            space = content.rfind(" ", size - 256, size)
            head = content[: space if space > 0 else size]
            trial = messages[:i] + [{**m, "content": head}]
            if len(render(trial, tokenizer, template, add_eos=False)) > need:
                return trial, i
            size *= 2
    return messages, None

"""Preference samples in TRL's formats -> token ids and response masks of (chosen, rejected).

Formats, read unchanged (https://huggingface.co/docs/trl/dataset_formats):

- standard: ``{"prompt": str, "chosen": str, "rejected": str}``
- conversational: ``{"prompt": [messages], "chosen": [messages], "rejected": [messages]}``
- implicit prompt: only ``chosen`` and ``rejected`` (strings or message lists); the prompt is
  their longest common prefix (whole messages, or characters ending before a space)

plus, optionally, TRL's precomputed ``ref_chosen_logps`` / ``ref_rejected_logps``.

Conversations are rendered like SFT (``sft.render``: the chat template, masks from token
boundaries) with only the response trained: its assistant content, closers and EOS, not earlier
assistant turns of the prompt. Strings are rendered as text (prompt + response + EOS, the
response being the tokens after the longest common prefix of the prompt's and the whole text's
ids, as TRL does) or, with ``strings="chat"``, as a user turn and an assistant turn.

A sample with an empty or identical chosen/rejected, or whose prompt leaves no room for a
response at ``seq_len``, is skipped and counted (``Skipped``); a sample that is not a preference
pair at all is an error naming its keys.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from ..sft.render import render


@dataclass
class Pair:
    chosen_ids: np.ndarray  # int64 (n,): prompt + chosen response
    chosen_mask: np.ndarray  # bool (n,): True on the response tokens
    rejected_ids: np.ndarray
    rejected_mask: np.ndarray
    ref: tuple[float, float] | None = None  # precomputed reference log-probs (chosen, rejected)


@dataclass
class Skipped:
    """Samples left out, by reason (reported in one warning)."""

    empty: int = 0
    identical: int = 0
    no_room: int = 0
    truncated: int = 0  # kept, with the response cut at seq_len
    examples: list[int] = field(default_factory=list)

    def total(self) -> int:
        return self.empty + self.identical + self.no_room

    def describe(self) -> str:
        parts = [f"{n} {what}" for n, what in ((self.empty, "with an empty chosen or rejected"),
                                              (self.identical, "with chosen identical to rejected"),
                                              (self.no_room, "whose prompt leaves no room for a response at seq_len"))
                 if n]
        return ", ".join(parts)


def _is_messages(v) -> bool:
    return isinstance(v, list) and all(isinstance(m, dict) and "role" in m for m in v)


def _common_messages(a: list, b: list) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def _common_text(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    if 0 < n < min(len(a), len(b)) and a[n - 1] == " ":  # the space starts the response (" word")
        n -= 1
    return n


def split_sample(sample, index: int) -> tuple[object, object, object]:
    """``(prompt, chosen, rejected)`` of any supported format: three strings or three message lists."""
    if not isinstance(sample, dict) or "chosen" not in sample or "rejected" not in sample:
        keys = sorted(sample) if isinstance(sample, dict) else type(sample).__name__
        raise ValueError(f"preference sample {index} needs 'chosen' and 'rejected' (and optionally 'prompt'); got "
                         f"{keys}. Formats: standard (prompt/chosen/rejected strings), conversational (message "
                         "lists), implicit prompt (chosen/rejected only)")
    chosen, rejected = sample["chosen"], sample["rejected"]
    conv = _is_messages(chosen)
    if conv != _is_messages(rejected) or not (conv or isinstance(chosen, str)) or not (
            conv or isinstance(rejected, str)):
        raise ValueError(f"preference sample {index}: chosen and rejected must both be strings or both be lists of "
                         "{role, content} messages")
    if "prompt" not in sample:
        cut = _common_messages(chosen, rejected) if conv else _common_text(chosen, rejected)
        return chosen[:cut], chosen[cut:], rejected[cut:]
    prompt = sample["prompt"]
    if conv and not _is_messages(prompt) or not conv and not isinstance(prompt, str):
        raise ValueError(f"preference sample {index}: the prompt must be a message list when chosen/rejected are "
                         "(conversational), a string when they are strings (standard)")
    return prompt, chosen, rejected


def _empty(response) -> bool:
    if isinstance(response, str):
        return not response.strip()
    return not response or all(not str(m.get("content") or "").strip() for m in response)


def _render_chat(prompt: list, response: list, tokenizer, template) -> tuple[np.ndarray, np.ndarray]:
    prompt_text, _ = template.format_messages(prompt, bos=False) if prompt else ("", [])
    text, _ = template.format_messages(prompt + response, bos=False)
    if not text.startswith(prompt_text):
        raise ValueError(f"chat template {template!r} renders the prompt differently alone than followed by a "
                         "response; the response tokens cannot be told apart")
    r = render(prompt + response, tokenizer, template, train_from=len(prompt_text))
    return r.ids, r.mask


def _render_text(prompt: str, response: str, tokenizer) -> tuple[np.ndarray, np.ndarray]:
    p_ids, ids = tokenizer.encode(prompt) if prompt else [], tokenizer.encode(prompt + response)
    n = 0
    while n < min(len(p_ids), len(ids)) and p_ids[n] == ids[n]:
        n += 1
    bos, eos = getattr(tokenizer, "bos_id", None), getattr(tokenizer, "eos_id", None)
    head = [bos] if bos is not None else []
    tail = [eos] if eos is not None else []
    all_ids = np.asarray(head + ids + tail, dtype=np.int64)
    mask = np.zeros(len(all_ids), dtype=bool)
    mask[len(head) + n:] = True
    return all_ids, mask


def _fit(ids: np.ndarray, mask: np.ndarray, row_len: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Cut to ``row_len`` keeping the start; None when no response token is left to train (the
    first token of a row is never a target, so a response starting there does not count)."""
    ids, mask = ids[:row_len], mask[:row_len]
    return (ids, mask) if mask[1:].any() else None


def render_pair(sample, index: int, tokenizer, template, strings: str, row_len: int,
                skipped: Skipped) -> Pair | None:
    """One sample as a ``Pair`` of rows of at most ``row_len`` tokens, or None (counted in ``skipped``)."""
    prompt, chosen, rejected = split_sample(sample, index)
    if sample["chosen"] == sample["rejected"]:  # before the split: an implicit prompt would leave two empty responses
        reason = "identical"
    else:
        reason = "empty" if _empty(chosen) or _empty(rejected) else "identical" if chosen == rejected else None
    rows = []
    if reason is None:
        for response in (chosen, rejected):
            if isinstance(response, str) and strings == "chat":
                msgs = [{"role": "user", "content": prompt}] if prompt else []
                ids, mask = _render_chat(msgs, [{"role": "assistant", "content": response}], tokenizer, template)
            elif isinstance(response, str):
                ids, mask = _render_text(prompt, response, tokenizer)
            else:
                ids, mask = _render_chat(prompt, response, tokenizer, template)
            rows.append((ids, mask))
        if not all(m.any() for _, m in rows):
            reason = "empty"
        elif np.array_equal(rows[0][0], rows[1][0]):
            reason = "identical"
    if reason is None:
        fitted = [_fit(ids, mask, row_len) for ids, mask in rows]
        if any(f is None for f in fitted):
            reason = "no_room"
    if reason is not None:
        setattr(skipped, reason, getattr(skipped, reason) + 1)
        if len(skipped.examples) < 5:
            skipped.examples.append(index)
        return None
    skipped.truncated += any(len(ids) > row_len for ids, _ in rows)
    ref = None
    if "ref_chosen_logps" in sample and "ref_rejected_logps" in sample:
        ref = (float(sample["ref_chosen_logps"]), float(sample["ref_rejected_logps"]))
        if not all(math.isfinite(v) for v in ref):
            raise ValueError(f"preference sample {index}: ref_chosen_logps / ref_rejected_logps must be finite numbers")
    (ci, cm), (ri, rm) = fitted
    return Pair(ci, cm, ri, rm, ref)

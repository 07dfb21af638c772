"""Generate until a stop sequence, many prompts at a time (lm-eval's ``generate_until``).

Prompts of the same length share a batch: each batch is one prefill and one cached decode step
per token (``generation.stream``, with its CPU decode layouts), and it ends as soon as every row
has produced a stop id (EOS, the chat closer) or one of the stop strings. Grouping by length
keeps every row unpadded, so a batched reply is exactly the reply the prompt gets alone.

>>> replies = generate_until(model, [ids_a, ids_b], decode=tok.decode, stop_texts=["\\n"],
...                          stop_ids=[tok.eos_id], max_new=32)              # doctest: +SKIP
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence

import torch


def generate_until(model, prompts: Sequence[Sequence[int]], *, decode: Callable[[list[int]], str],
                   max_new: int, stop_ids: Sequence[int] = (), stop_texts: Sequence[str] = (),
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   batch_size: int = 16, generator: torch.Generator | None = None) -> list[list[int]]:
    """The new token ids of each prompt: up to ``max_new``, ending before the first stop id
    (which is not included) and no later than the token that completes a stop string (the
    caller cuts the decoded text at it). ``temperature=0`` is greedy."""
    device = model.embed.weight.device
    stops = {int(i) for i in stop_ids}
    out: list[list[int]] = [[] for _ in prompts]
    by_length: dict[int, list[int]] = defaultdict(list)
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError("generate_until needs a non-empty prompt")
        by_length[len(p)].append(i)
    for length in sorted(by_length, reverse=True):
        idx = by_length[length]
        for a in range(0, len(idx), batch_size):
            rows = idx[a:a + batch_size]
            tokens = torch.tensor([list(prompts[i]) for i in rows], dtype=torch.long, device=device)
            for r, ids in zip(rows, _one_batch(model, tokens, decode, max_new, stops, stop_texts, temperature,
                                                top_k, top_p, generator), strict=True):
                out[r] = ids
    return out


def _one_batch(model, tokens, decode, max_new, stops: set[int], stop_texts, temperature, top_k, top_p, generator):
    new: list[list[int]] = [[] for _ in range(tokens.shape[0])]
    done = [False] * tokens.shape[0]
    # A stop string that was not there one token ago ends in the newest token's text, so a tail of
    # the row covers it (every token adds at least a character, or a byte of one).
    tail = max((len(s) for s in stop_texts), default=0) + 4
    if max_new == 0:
        return new
    steps = model.stream(tokens, max_new=max_new, temperature=temperature, top_k=top_k, top_p=top_p,
                         stop_ids=sorted(stops) or None, generator=generator)
    for step in steps:
        for r, t in enumerate(step.tolist()):
            if done[r]:
                continue
            if t in stops:
                done[r] = True
                continue
            new[r].append(t)
            if stop_texts and any(s and s in decode(new[r][-tail:]) for s in stop_texts):
                done[r] = True
        if all(done):
            steps.close()  # the remaining steps would only decode finished rows
            break
    return new

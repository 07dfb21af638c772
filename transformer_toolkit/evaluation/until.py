"""Generate until a stop sequence, many prompts at a time (lm-eval's ``generate_until``).

Prompts of different lengths share a batch without padding: the batch prefills every prompt's
first ``L0`` tokens (the shortest prompt's length), then decodes in lockstep, one position per
step for all rows, and a row whose prompt is longer is fed its own next prompt token until its
prompt is done (it "catches up") and only then its samples. Every row thus sees exactly its
prompt and its own tokens at their own positions: its reply is the one it gets alone (the prompt
tail runs through cached decode steps instead of the prefill, equal to ~1e-6). A catch-up token
costs more than a prefilled one, so prompts (sorted by length) are cut into batches that minimise
an estimate of prefill plus step cost (``_plan``): prompts of close lengths share a batch, a far
longer one gets its own. (Rows decoding at their own positions in one step would batch prompts
of any length; the model's cached forward takes one position for all rows.) A batch ends when
every row has produced a stop id (EOS, the chat closer), completed a stop string, or ``max_new``
tokens.

>>> replies = generate_until(model, [ids_a, ids_b], decode=tok.decode, stop_texts=["\\n"],
...                          stop_ids=[tok.eos_id], max_new=32)              # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from ..generation import sample_next
from ..model.kernels import decode_kernels

# A decode step's cost in prefilled prompt tokens: a fixed part (every weight streamed once) and a
# part per row (one token through the whole model, less efficiently than in a prefill). Measured
# on SmolLM2-135M, fp32, one CPU thread: a prompt token 10 ms, a step 240 ms at 1 row, 660 ms at 12.
STEP_COST, ROW_COST = 24, 4


def generate_until(model, prompts: Sequence[Sequence[int]], *, decode: Callable[[list[int]], str],
                   max_new: int, stop_ids: Sequence[int] = (), stop_texts: Sequence[str] = (),
                   temperature: float = 0.0, top_k: int | None = None, top_p: float | None = None,
                   batch_size: int = 16, generator: torch.Generator | None = None) -> list[list[int]]:
    """The new token ids of each prompt: up to ``max_new``, ending before the first stop id
    (which is not included) and no later than the token that completes a stop string (the
    caller cuts the decoded text at it). ``temperature=0`` is greedy. Every prompt plus
    ``max_new`` must fit the model's context."""
    out: list[list[int]] = [[] for _ in prompts]
    if max_new <= 0 or not prompts:
        return out
    for i, p in enumerate(prompts):
        if not 0 < len(p) <= model.cfg.max_seq - max_new:
            raise ValueError(f"prompt {i} has {len(p)} tokens: it needs 1 to max_seq - max_new = "
                             f"{model.cfg.max_seq - max_new} (cut it from the left first)")
    # expert-choice MoE routes a cached step differently from a prefill: there only prompts of
    # one length share a batch, each prefilled whole
    catch_up = getattr(model.cfg, "ffn", None) != "moe_ec"
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), decode_kernels(model):
            for batch in _plan([len(prompts[i]) for i in order], max_new, batch_size, catch_up):
                rows = [order[j] for j in batch]
                for i, ids in zip(rows, _one_batch(model, [list(prompts[i]) for i in rows], decode, max_new,
                                                   {int(t) for t in stop_ids}, stop_texts, temperature, top_k,
                                                   top_p, generator), strict=True):
                    out[i] = ids
    finally:
        model.train(was_training)
    return out


def _plan(lengths: list[int], max_new: int, batch_size: int, catch_up: bool) -> list[range]:
    """Cut sorted prompt ``lengths`` into consecutive batches of at most ``batch_size`` that
    minimise the estimated cost: prefilling each batch's shortest length for every row, plus one
    step (``STEP_COST + rows * ROW_COST``) per position from there to the longest prompt's end
    plus ``max_new``. Without ``catch_up`` a batch holds one length only."""
    n = len(lengths)
    best = [0.0] + [float("inf")] * n  # best[j]: cost of the first j prompts
    cut = [0] * (n + 1)
    for j in range(1, n + 1):
        for i in range(max(0, j - batch_size), j):
            if not catch_up and lengths[i] != lengths[j - 1]:
                continue
            rows = j - i
            cost = rows * lengths[i] + (lengths[j - 1] - lengths[i] + max_new) * (STEP_COST + rows * ROW_COST)
            if best[i] + cost < best[j]:
                best[j], cut[j] = best[i] + cost, i
    batches, j = [], n
    while j > 0:
        batches.append(range(cut[j], j))
        j = cut[j]
    return batches[::-1]


def _one_batch(model, prompts: list[list[int]], decode, max_new: int, stops: set[int], stop_texts, temperature,
               top_k, top_p, generator) -> list[list[int]]:
    device = model.embed.weight.device
    B, start = len(prompts), min(len(p) for p in prompts)
    # A stop string that was not there one token ago ends in the newest token's text, so a tail of
    # the row covers it (every token adds at least a character, or a byte of one).
    tail = max((len(s) for s in stop_texts), default=0) + 4
    cache = model.make_cache(B, max_len=max(len(p) for p in prompts) + max_new)
    logits, _ = model(torch.tensor([p[:start] for p in prompts], device=device), cache=cache, start_pos=0,
                      logits_to_keep=1)
    new: list[list[int]] = [[] for _ in prompts]
    done = [False] * B
    pos = start  # the position every row's next token takes
    while True:
        sampled = sample_next(logits[:, -1], temperature, top_k, top_p, generator).tolist()
        feed = []
        for r, p in enumerate(prompts):
            if pos < len(p):  # still catching up: its own prompt token, whatever was predicted
                feed.append(p[pos])
                continue
            t = sampled[r]
            feed.append(t)
            if done[r]:
                continue
            if t in stops:
                done[r] = True
                continue
            new[r].append(t)
            done[r] = len(new[r]) == max_new or bool(stop_texts) and any(
                s and s in decode(new[r][-tail:]) for s in stop_texts)
        if all(done):
            return new
        logits, _ = model(torch.tensor(feed, device=device)[:, None], cache=cache, start_pos=pos)
        pos += 1

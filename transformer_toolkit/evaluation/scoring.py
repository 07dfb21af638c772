"""Score token sequences with a model: the engine under bits per byte and the lm-eval adapter.

A request is a ``(context ids, continuation ids)`` pair; its answer is the summed log-probability
of the continuation given the context and whether greedy decoding would produce it (lm-eval's
``loglikelihood``). Two paths, one result:

- **shared context**: requests with the same context (the options of a multiple-choice question)
  run the context once into a KV cache (the contexts of many questions in one padded forward),
  then every continuation as one batch over a copy of that cache. A 4-option question costs one
  context instead of four, and one-token options (" A", " B", ...) need nothing past the
  context's last position.
- **batched**: the other requests, sorted by length (longest first, so the first batch shows the
  peak memory), right-padded and run as one forward per batch. Padding on the right never
  changes a causal model's earlier positions.

Either way the head (``vocab`` wide, a fifth of the work at SmolLM2's 49k vocabulary) runs only
over the positions whose log-probabilities are read. A request longer than the model's context
keeps its last ``max_len + 1`` tokens, as lm-eval's ``hf`` model does.

>>> loglikelihoods(model, [([5, 6, 7], [8, 9]), ([5, 6, 7], [10])])   # doctest: +SKIP
[(-7.31, False), (-4.02, True)]
"""

from __future__ import annotations

import functools
from collections import defaultdict
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

# Tokens per forward (rows x padded length): bounds the fp32 log-softmax of the kept positions,
# 2048 x 49k x 4 bytes = 400 MB at SmolLM2's vocabulary.
BATCH_TOKENS = 2048


def _exact_with_cache(model) -> bool:
    """Expert-choice MoE routes over the whole sequence: neither a cached continuation nor a
    padded row gives the full forward's numbers, so such a model is scored row by row."""
    return getattr(model.cfg, "ffn", None) != "moe_ec"


def loglikelihoods(model, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, max_len: int | None = None,
                   batch_size: int = 64, batch_tokens: int = BATCH_TOKENS, per_token: bool = False,
                   on_truncate: Callable[[int, int], None] | None = None) -> list:
    """``[(logprob, is_greedy)]`` per request (with ``per_token``: the ``(n_cont,)`` fp32 tensor
    of token log-probabilities instead of their sum). Every continuation must be non-empty and
    at most ``max_len`` (default the model's ``max_seq``) tokens; a request longer than
    ``max_len + 1`` keeps its last ``max_len + 1`` tokens and ``on_truncate(total, max_len)``
    is called for it. The model runs in eval mode without gradients."""
    max_len = max_len or model.cfg.max_seq
    items = []
    for ctx, cont in requests:
        ctx, cont = [int(t) for t in ctx], [int(t) for t in cont]
        if not cont or not ctx:
            raise ValueError("a scored request needs a non-empty context and continuation (use a prefix token "
                             "such as BOS as the context of a text's first token)")
        if len(cont) > max_len:
            raise ValueError(f"a continuation of {len(cont)} tokens is longer than the model's context ({max_len})")
        if len(ctx) + len(cont) > max_len + 1 and on_truncate is not None:
            on_truncate(len(ctx) + len(cont), max_len)
        items.append((ctx, cont))
    out: list = [None] * len(items)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            shared, alone = _split_by_context(items, max_len, _exact_with_cache(model))
            _prefill = functools.partial(_prefill_contexts, model)
            shared.sort(key=lambda g: -len(g[0]))
            for chunk in _chunks(list(range(len(shared))), lambda g: len(shared[g][0]), batch_size, batch_tokens):
                cache, first = _prefill([shared[g][0] for g in chunk])
                for row, g in enumerate(chunk):
                    ctx, members = shared[g]
                    conts = [items[i][1] for i in members]
                    results = _score_shared(model, (cache, row, len(ctx)), first[row], conts, per_token, batch_size,
                                            batch_tokens)
                    for i, res in zip(members, results, strict=True):
                        out[i] = res
            for batch in _batches(alone, items, max_len, batch_size, batch_tokens, _exact_with_cache(model)):
                for i, res in zip(batch, _score_batch(model, [items[i] for i in batch], max_len, per_token),
                                  strict=True):
                    out[i] = res
    finally:
        model.train(was_training)
    return out


def _split_by_context(items, max_len: int, cache_ok: bool):
    """``([(context, [request index...])], [index of a request scored alone])``: requests that
    share their context with another one (and fit the context untruncated) go together."""
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    alone = []
    for i, (ctx, cont) in enumerate(items):
        if cache_ok and len(ctx) + len(cont) <= max_len + 1:
            groups[tuple(ctx)].append(i)
        else:
            alone.append(i)
    shared = []
    for ctx, members in groups.items():
        if len(members) > 1:
            shared.append((list(ctx), members))
        else:
            alone.extend(members)
    return shared, alone


def _result(logits: Tensor, targets: Tensor, per_token: bool, block: int = 1024):
    """Log-probabilities of ``targets`` ``(n,)`` under ``logits`` ``(n, vocab)``, in fp32, a
    block of positions at a time (a 8k-token window of a 49k vocabulary is 1.6 GB in fp32)."""
    tok = torch.cat([torch.log_softmax(logits[a:a + block].float(), dim=-1).gather(-1, targets[a:a + block, None])
                     for a in range(0, len(targets), block)]).squeeze(-1)
    if per_token:
        return tok
    return float(tok.sum()), bool((logits.argmax(dim=-1) == targets).all())


def _prefill_contexts(model, contexts: list[list[int]]) -> tuple[list, Tensor]:
    """Several contexts in one forward, right-padded: ``(cache, first)``, a cache whose row r holds
    context r's keys and values at its positions (padding after them, never read), and the
    logits of each context's last position ``(rows, vocab)``, which score its continuations' first token."""
    device = model.embed.weight.device
    width, shortest = max(len(c) for c in contexts), min(len(c) for c in contexts)
    rows = torch.zeros(len(contexts), width, dtype=torch.long, device=device)
    for r, c in enumerate(contexts):
        rows[r, :len(c)] = torch.tensor(c, device=device)
    cache = model.make_cache(len(contexts), max_len=width)
    keep = width - shortest + 1
    logits, _ = model(rows, cache=cache, start_pos=0, logits_to_keep=keep)  # (rows, keep, V)
    return cache, torch.stack([logits[r, len(c) - 1 - (width - keep)] for r, c in enumerate(contexts)])


def _score_shared(model, prefix: tuple[list, int, int], first: Tensor, conts: list[list[int]], per_token: bool,
                  batch_size: int, batch_tokens: int) -> list:
    """One context, several continuations. ``prefix``: ``(cache, row, length)``, where the
    context's keys and values are; ``first``: the logits after the context. The continuations
    (all but their last token, which is only a target) run in batches over copies of it."""
    device = model.embed.weight.device
    held, row, c = prefix
    out: list = [None] * len(conts)
    order = sorted(range(len(conts)), key=lambda r: -len(conts[r]))
    for chunk in _chunks(order, lambda r: len(conts[r]) - 1, batch_size, batch_tokens):
        longest = len(conts[chunk[0]])
        rest = None
        if longest > 1:
            cache = model.make_cache(len(chunk), max_len=c + longest - 1)
            for big, small in zip(cache, held, strict=True):
                for b, s in zip(big.buffers, small.buffers, strict=True):
                    b[..., :c, :] = s[row:row + 1, ..., :c, :]  # the context's keys/values, copied to every row
            rows = torch.zeros(len(chunk), longest - 1, dtype=torch.long, device=device)
            for j, r in enumerate(chunk):
                rows[j, :len(conts[r]) - 1] = torch.tensor(conts[r][:-1], device=device)
            rest, _ = model(rows, cache=cache, start_pos=c)  # (rows, longest - 1, V)
        for j, r in enumerate(chunk):
            t = conts[r]
            logits = first[None] if rest is None else torch.cat([first[None], rest[j, :len(t) - 1]])
            out[r] = _result(logits, torch.tensor(t, device=device), per_token)
    return out


def _chunks(order: list[int], length, batch_size: int, batch_tokens: int, same_length: bool = False):
    """Consecutive runs of ``order`` (longest first) whose rows x first length stays within
    ``batch_tokens`` and ``batch_size`` (``same_length``: rows of one length only)."""
    batch: list[int] = []
    for i in order:
        if batch and ((len(batch) + 1) * max(1, length(batch[0])) > batch_tokens or len(batch) >= batch_size
                      or (same_length and length(i) != length(batch[0]))):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch


def _batches(indices: list[int], items, max_len: int, batch_size: int, batch_tokens: int, pad_ok: bool):
    """Longest first (ties by tokens, so equal requests sit together), chunked by ``_chunks``;
    without padding (``moe_ec``) a batch holds rows of one length only."""
    def length(i):
        ctx, cont = items[i]
        return min(len(ctx) + len(cont), max_len + 1) - 1

    order = sorted(indices, key=lambda i: (-length(i), items[i][0] + items[i][1]))
    return _chunks(order, length, batch_size, batch_tokens, same_length=not pad_ok)


def _score_batch(model, batch: list[tuple[list[int], list[int]]], max_len: int, per_token: bool) -> list:
    """Right-padded rows, one forward; the head runs from the earliest continuation position on."""
    device = model.embed.weight.device
    inputs = [(ctx + cont)[-(max_len + 1):][:-1] for ctx, cont in batch]
    width = max(len(x) for x in inputs)
    rows = torch.zeros(len(batch), width, dtype=torch.long, device=device)
    for r, x in enumerate(inputs):
        rows[r, :len(x)] = torch.tensor(x, device=device)
    # row r's continuation is scored at positions [len(x) - n_cont, len(x))
    first = min(len(x) - len(cont) for x, (_, cont) in zip(inputs, batch, strict=True))
    logits, _ = model(rows, logits_to_keep=width - first)  # (B, width - first, V)
    out = []
    for r, (x, (_, cont)) in enumerate(zip(inputs, batch, strict=True)):
        a = len(x) - len(cont) - first
        out.append(_result(logits[r, a:a + len(cont)], torch.tensor(cont, device=device), per_token))
    return out


def rolling_windows(ids: Sequence[int], prefix: int, max_len: int) -> list[tuple[list[int], list[int]]]:
    """``(context, continuation)`` pairs that score every token of ``ids`` exactly once, each
    with as much context as fits: lm-eval's ``loglikelihood_rolling`` windows
    (``get_rolling_token_windows`` with one token of context, made disjoint).

    The first window predicts ``ids[:max_len]`` after ``prefix`` (BOS or EOS); each next one
    predicts the next ``max_len`` tokens from the token before them; the last, shorter one keeps
    a full window of context. ``loglikelihoods`` of these pairs, summed, is the log-likelihood
    of the whole text."""
    ids = [int(t) for t in ids]
    if not ids:
        return []
    first = min(max_len, len(ids))
    out = [([prefix], ids[:first])]
    done = first
    while done < len(ids):
        end = min(len(ids), done + max_len)
        start = max(0, end - max_len - 1)
        out.append((ids[start:done], ids[done:end]))
        done = end
    return out

"""``generate`` and ``stream``: a batch of rows decoded in lockstep on an ``Engine``.

The loop is a prefill (the prompt in one forward, filling the cache) then one decode step per
new token. Every step conditions on a window of at most ``max_seq`` tokens: when the cache is
full, the window slides to the last ``max_seq // 2`` tokens and the cache is rebuilt from them
with fresh positions (one prefill per ``max_seq // 2`` new tokens), so generation continues past
``max_seq`` and the returned sequence always holds the whole prompt and every generated token.
A prompt longer than ``max_seq`` is conditioned on its last ``max_seq`` tokens.

>>> out = model.generate(prompt, max_new=50, temperature=0.8, top_k=40, top_p=0.95)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import torch
from torch import Tensor

from ..model.fast_decode import weights_stamp
from ..model.kernels import decode_kernels
from . import steps
from .engine import Engine
from .prompt_cache import PromptCache
from .sampling import SamplingParams, sample

# Extra cache slots a call with a prompt cache allocates (or a quarter more, if larger), so that
# the next turn of a chat usually fits and fills the same cache in place instead of copying it.
PROMPT_CACHE_ROOM = 256


def check_prompt(model, tokens: Tensor) -> None:
    """A ``(batch, length)`` tensor of integer ids within the model's vocabulary, or ValueError."""
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a (batch, length) tensor with length >= 1, got shape {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"tokens must hold integer ids, got {tokens.dtype}")
    vocab = model.cfg.vocab_size
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab}); got min {int(tokens.min())}, max {int(tokens.max())}")


def _new_engine(model, B: int, needed: int, max_new: int, compile: bool, room: bool, device) -> Engine:
    """A fresh engine for a call that reaches ``needed`` positions, with its decode step."""
    max_seq = model.cfg.max_seq
    if compile and max_new > 1:
        cache = model.make_cache(B, max_len=steps.compiled_cache_len(needed, max_seq), device=device)
        return Engine(model, cache, steps.CompiledStep.create(model, cache, B, device))
    # with a prompt cache, room for a few more turns, so the next call can fill it in place
    length = min(max_seq, needed + max(PROMPT_CACHE_ROOM, needed // 4)) if room else needed
    cache = model.make_cache(B, max_len=length, device=device)
    return Engine(model, cache, steps.GraphStep.create(model, cache, B, device) if max_new > 1 else None)


def _engine_for(model, B: int, needed: int, max_new: int, compile: bool, prompt_cache: PromptCache | None,
                weights: tuple | None, device) -> tuple[Engine, Engine | None]:
    """``(engine of this call, engine whose prefix it may reuse)``. A prompt cache's engine is
    reused in place when it has room; a compiled or captured step always gets a fresh cache,
    since making it writes position 0, and the prefix is copied in after."""
    held = None if prompt_cache is None else prompt_cache.held(weights, B)
    fixed_step = max_new > 1 and (compile or (steps.CUDA_GRAPHS and device.type == "cuda"))
    if held is not None and not fixed_step and held.max_len >= needed:
        return held, held
    return _new_engine(model, B, needed, max_new, compile, prompt_cache is not None, device), held


def _decode_loop(model, out: Tensor, T0: int, max_new: int, params: SamplingParams, stops: Tensor,
                 pad: int | None, generator, compile: bool, prompt_cache: PromptCache | None
                 ) -> Iterator[tuple[Tensor, Tensor]]:
    B, max_seq = out.shape[0], model.cfg.max_seq
    keep = max(1, max_seq // 2)
    done = torch.zeros(B, dtype=torch.bool, device=out.device)
    win = max(0, T0 - max_seq)  # window start in `out`
    # the cache holds what this call can reach, not always max_seq (which a pretrained model's
    # config may set to 8192 or more): allocating and zeroing that would dominate short replies
    needed = min(max_seq, T0 - win + max_new)
    weights = None if prompt_cache is None else weights_stamp(model)
    engine, donor = _engine_for(model, B, needed, max_new, compile, prompt_cache, weights, out.device)
    if prompt_cache is not None:
        prompt_cache.clear()  # dropped until this call's engine holds something
    logits, reused = engine.start_all(out[:, win:T0], donor)  # prefill
    if prompt_cache is not None:  # the engine records each step: the caller may stop at any token
        prompt_cache.keep(engine, weights, reused)
    n_ctx, cur = T0 - win, T0  # the cache holds the last n_ctx tokens of out[:, :cur]
    for step in range(max_new):
        nxt = sample(logits, params, generator)
        if len(stops):
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            done = done | torch.isin(nxt, stops)
        out[:, cur] = nxt
        cur += 1
        yield out[:, :cur], nxt
        if step == max_new - 1 or (len(stops) and bool(done.all())):
            return
        if n_ctx == max_seq:  # window full: slide and rebuild the cache from the kept tokens
            logits, n_ctx = engine.restart_all(out[:, cur - keep:cur]), keep
        else:
            logits, n_ctx = engine.decode(nxt), n_ctx + 1


@torch.inference_mode()
def _run(model, tokens: Tensor, max_new: int, params: SamplingParams, stop_ids: Iterable[int] | None,
         pad_id: int | None, generator, compile: bool = False,
         prompt_cache: PromptCache | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields ``(out, new)`` after each step: the whole buffer and the ``(B,)`` new tokens."""
    check_prompt(model, tokens)
    if max_new < 0:
        raise ValueError(f"max_new must be >= 0, got {max_new}")
    B, T0 = tokens.shape
    out = torch.empty(B, T0 + max_new, dtype=torch.long, device=tokens.device)
    out[:, :T0] = tokens
    stops = torch.tensor(sorted(set(stop_ids or ())), dtype=torch.long, device=tokens.device)
    pad = int(stops[0]) if pad_id is None and len(stops) else pad_id
    if max_new == 0:
        if prompt_cache is not None:
            prompt_cache.reused = 0
        return
    with nullcontext() if compile else decode_kernels(model):  # a compiled step has its own kernels
        yield from _decode_loop(model, out, T0, max_new, params, stops, pad, generator, compile, prompt_cache)


def _as_batch(tokens, model) -> tuple[Tensor, bool]:
    """``(tokens as (B, T) on the model's device, whether they were 1-D)``: a list, or a CPU
    prompt for a GPU model, is moved where the model is."""
    device = next(model.parameters()).device
    tokens = torch.as_tensor(tokens, dtype=None if isinstance(tokens, Tensor) else torch.long, device=device)
    return (tokens.unsqueeze(0), True) if tokens.dim() == 1 else (tokens, False)


def generate(model, tokens, max_new: int = 100, temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, stop_ids: Iterable[int] | None = None, pad_id: int | None = None,
             generator: torch.Generator | None = None, compile: bool = False,
             prompt_cache: PromptCache | None = None) -> Tensor:
    """Return ``tokens`` followed by ``max_new`` sampled tokens, ``(B, T + max_new)``.

    ``stop_ids`` (e.g. EOS and end-of-turn ids): a row that samples one keeps it and is then
    filled with ``pad_id`` (default: the smallest stop id); generation ends early once every
    row has stopped. A 1-D ``tokens`` gives a 1-D result. The model is put in eval mode for the
    call and restored afterwards.

    ``compile=True`` decodes with a step compiled by torch.compile (``CompiledStep``): about 2x
    faster per token on CPU at batch 1 (slower than eager at batch 8), after a one-time compile
    of 10-20 s per batch size and cache length. Worth it for long or repeated generation, not
    for one short reply.

    ``prompt_cache`` (a ``PromptCache``, reused across calls): prefill only the part of
    ``tokens`` after the prefix the previous call already cached, as a chat's next turn.
    """
    params = SamplingParams(temperature, top_k, top_p)
    batch, squeeze = _as_batch(tokens, model)
    result = batch.to(torch.long)
    was_training = model.training
    model.eval()
    try:
        for buffer, _ in _run(model, batch, max_new, params, stop_ids, pad_id, generator, compile, prompt_cache):
            result = buffer
    finally:
        model.train(was_training)
    result = result.clone()
    return result[0] if squeeze else result


def stream(model, tokens, max_new: int = 100, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, stop_ids: Iterable[int] | None = None, pad_id: int | None = None,
           generator: torch.Generator | None = None, compile: bool = False,
           prompt_cache: PromptCache | None = None) -> Iterator[Tensor]:
    """Yield each new token as it is sampled: a ``(B,)`` tensor (a 0-dim tensor for 1-D input).
    ``compile`` and ``prompt_cache`` as in ``generate``."""
    params = SamplingParams(temperature, top_k, top_p)
    batch, squeeze = _as_batch(tokens, model)
    was_training = model.training
    model.eval()
    try:
        for _, new in _run(model, batch, max_new, params, stop_ids, pad_id, generator, compile, prompt_cache):
            yield new[0].clone() if squeeze else new.clone()
    finally:
        model.train(was_training)

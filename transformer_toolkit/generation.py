"""Autoregressive sampling with a pre-allocated KV cache.

The loop is ``prefill`` (the prompt in one forward, filling the cache) then one
``decode_one_token`` per new token. Every step conditions on a window of at most ``max_seq``
tokens: when the cache is full, the window slides to the last ``max_seq // 2`` tokens and the
cache is rebuilt from them with fresh positions (one prefill per ``max_seq // 2`` new tokens),
so generation continues past ``max_seq`` and the returned sequence always holds the whole
prompt and every generated token. A prompt longer than ``max_seq`` is conditioned on its
last ``max_seq`` tokens.

>>> out = model.generate(prompt, max_new=50, temperature=0.8, top_k=40, top_p=0.95)  # doctest: +SKIP
"""

from __future__ import annotations

import inspect
import warnings
from collections.abc import Iterable, Iterator
from contextlib import nullcontext

import torch
from torch import Tensor

from .model.fast_decode import weights_stamp
from .model.kernels import decode_kernels


def sample_next(logits: Tensor, temperature: float = 1.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Tensor:
    """Pick one token per row from ``logits`` ``(B, V)``.

    ``temperature == 0`` or ``top_k == 1`` is greedy (argmax). Otherwise logits are divided by
    the temperature, restricted to the ``top_k`` largest, then to the smallest set whose
    probability reaches ``top_p`` (nucleus sampling; the most likely token is always kept),
    and sampled.
    """
    if temperature == 0 or top_k == 1:
        # exact either way; PyTorch's CPU argmax is ~3x slower over bf16 than over fp32
        return (logits.float() if logits.device.type == "cpu" else logits).argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = logits.topk(top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # probability mass strictly above each token
        sorted_logits = sorted_logits.masked_fill(before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_args(model, tokens: Tensor, max_new: int, temperature: float, top_k, top_p) -> None:
    if tokens.dim() != 2 or tokens.shape[1] == 0:
        raise ValueError(f"tokens must be a (batch, length) tensor with length >= 1, got shape {tuple(tokens.shape)}")
    if tokens.dtype not in (torch.long, torch.int32, torch.int64):
        raise ValueError(f"tokens must hold integer ids, got {tokens.dtype}")
    if max_new < 0:
        raise ValueError(f"max_new must be >= 0, got {max_new}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise ValueError(f"top_k must be >= 1 or None, got {top_k}")
    if top_p is not None and not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    vocab = model.cfg.vocab_size
    if tokens.numel() and (int(tokens.min()) < 0 or int(tokens.max()) >= vocab):
        raise ValueError(f"token ids must be in [0, {vocab}); got min {int(tokens.min())}, max {int(tokens.max())}")


class PromptCache:
    """The KV cache of one ``generate``/``stream`` call, kept for the next call.

    A chat renders the whole conversation again every turn, so each prompt starts with the
    previous prompt and reply. Pass the same ``PromptCache`` to successive calls and each one
    prefills only the tokens after the longest prefix it shares with what the cache already
    holds: the conversation's earlier turns are not recomputed (``ChatSession`` does this).
    An eager call allocates ``PROMPT_CACHE_ROOM`` slots more than it needs, so the next turn
    usually fits and fills the same buffers in place; otherwise the prefix is copied over.
    A prefill in two chunks computes the same function as one over the whole prompt: greedy
    fp32 tokens are identical (tested for every attention and position kind). In bf16 the keys
    and values of the previous reply were computed by decode steps, whose kernels round
    differently from a prefill's, so near-ties can go either way, as between any two kernels
    (a bf16 prefill split in two gives the very logits of a whole one). The cache is
    not used when the model's weights, dtype or device changed since it was filled, when the
    batch size differs, or for ``moe_ec`` models (expert choice routes over the whole prompt).
    """

    def __init__(self):
        self.clear()

    def clear(self) -> None:
        """Forget what is cached (the next call prefills its whole prompt)."""
        self.cache: list | None = None
        self.ids: Tensor | None = None  # (B, n) the tokens at cache positions 0..n-1
        self.weights: tuple | None = None
        self.reused = 0  # prompt tokens the last call took from the cache

    def __len__(self) -> int:
        return 0 if self.ids is None else self.ids.shape[1]

    def _hold(self, weights: tuple, cache: list, ids: Tensor) -> None:
        self.cache, self.ids, self.weights = cache, ids, weights

    def _valid(self, weights: tuple | None, batch: int) -> bool:
        """Whether the held cache was filled by these very weights, at this batch size."""
        return self.cache is not None and weights is not None and self.weights == weights \
            and self.ids.shape[0] == batch

    def _prefix(self, model, weights: tuple | None, window: Tensor, cache: list) -> int:
        """How many leading tokens of ``window`` (B, T) can be copied into ``cache`` from the
        held one: at most T - 1, so at least one token is prefilled and gives logits."""
        if not self._valid(weights, window.shape[0]) or model.cfg.ffn == "moe_ec" or len(self.cache) != len(cache):
            return 0
        for old, new in self._buffer_pairs(cache):
            if (old.shape[:-2], old.shape[-1], old.dtype, old.device) != \
                    (new.shape[:-2], new.shape[-1], new.dtype, new.device):
                return 0
        n = min(self.ids.shape[1], window.shape[1] - 1)
        if n <= 0:
            return 0
        same = (self.ids[:, :n] == window[:, :n]).all(dim=0)
        return n if bool(same.all()) else int(same.to(torch.int8).argmin())

    def _buffer_pairs(self, cache: list):
        """``(held buffer, buffer of cache)`` for every layer's buffers, in order."""
        for old_layer, new_layer in zip(self.cache, cache, strict=True):
            yield from zip(old_layer.buffers, new_layer.buffers, strict=True)

    def _with_room(self, weights: tuple | None, batch: int, needed: int) -> list | None:
        """The held cache if it is valid for these weights and batch and has ``needed`` slots."""
        return self.cache if self._valid(weights, batch) and self.cache[0].max_len >= needed else None

    def _take(self, model, weights: tuple | None, window: Tensor, cache: list) -> int:
        """Start a call whose prompt window is ``window`` and whose cache is ``cache``: put the
        reusable prefix into ``cache`` (already there when it is the held cache) and return
        its length. The held state is dropped until the call holds its own."""
        reused = self._prefix(model, weights, window, cache)
        if reused and cache is not self.cache:
            for old, new in self._buffer_pairs(cache):
                new[..., :reused, :] = old[..., :reused, :]
        self.clear()
        self.reused = reused
        return reused


@torch.inference_mode()
def _run(model, tokens: Tensor, max_new: int, temperature: float, top_k, top_p,
         stop_ids: Iterable[int] | None, pad_id: int | None, generator,
         compile: bool = False, prompt_cache: PromptCache | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    """Yields ``(out, new)`` after each step: the whole buffer and the ``(B,)`` new tokens."""
    _check_args(model, tokens, max_new, temperature, top_k, top_p)
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
        yield from _decode_loop(model, out, T0, max_new, temperature, top_k, top_p, stops, pad, generator, compile,
                                prompt_cache)


class GraphStep:
    """One decode step (one token per row at a tensor position) captured in a CUDA graph.

    Eager decoding of a small batch launches a few hundred small kernels per token, and on a
    GPU the launches, not the weight reads, then set the pace. The step is captured once per
    ``generate`` call (after warm-up runs on a side stream, as CUDA graphs require) and
    replayed with the next token and position copied into its static inputs: every shape is
    the same at every position because the step attends over the whole cache buffer with a
    mask (``Transformer._static_context``). ``GraphStep.create`` returns None where capture is
    not possible (not CUDA, or an operation that syncs with the host), and decoding stays eager.
    """

    def __init__(self, model, cache, batch: int, device: torch.device):
        self.device = device
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        # on the model's GPU, which need not be the current one (a model on cuda:1, say)
        with torch.cuda.device(device):
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):
                for _ in range(2):  # warm-up (allocations, lazy kernel setup) outside the capture
                    model(self.tok, cache=cache, start_pos=self.pos)
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph, stream=torch.cuda.Stream(device)):
                self.logits, _ = model(self.tok, cache=cache, start_pos=self.pos)

    @classmethod
    def create(cls, model, cache, batch: int, device: torch.device) -> GraphStep | None:
        if device.type != "cuda" or not CUDA_GRAPHS:
            return None
        try:
            return cls(model, cache, batch, device)
        except RuntimeError as e:  # e.g. a host read inside the step: stay eager
            warnings.warn(f"decoding without a CUDA graph (capture failed: {str(e).splitlines()[0]})", stacklevel=3)
            return None

    def __call__(self, tokens: Tensor, pos: int) -> Tensor:
        self.tok.copy_(tokens)
        self.pos.fill_(pos)
        with torch.cuda.device(self.device):
            self.graph.replay()
        return self.logits


def _decode_step(model, tokens: Tensor, pos: Tensor, cache) -> Tensor:
    return model(tokens, cache=cache, start_pos=pos)[0]


class CompiledStep:
    """One decode step (one token per row at a tensor position) compiled with torch.compile.

    The step has the same shapes at every position (``Transformer._static_context``), so it is
    compiled once per batch size, cache length and dtype and reused by later calls (the cache
    length is rounded up to a power of two, so a few lengths cover every call). On CPU it is
    traced with its decode kernels (``kernels.decode_kernels(compiled=True)``: linears as row dot
    products) and Inductor fuses each layer's norms, rope, cache write, attention and
    activations around them; what
    is left is streaming the weights. On CUDA the mode is ``reduce-overhead`` (CUDA graphs).
    The first call compiles (about 10-20 s on 2 CPU cores); ``create`` returns None, with a
    warning, where compiling fails (no C++ compiler, say), and decoding stays eager.
    """

    _compiled: dict[str, object] = {}  # one torch.compile wrapper per mode, shared by every model

    def __init__(self, model, cache, batch: int, device: torch.device):
        self.model, self.cache, self.device = model, cache, device
        self.tok = torch.zeros(batch, 1, dtype=torch.long, device=device)
        self.pos = torch.zeros(1, dtype=torch.long, device=device)
        mode = "reduce-overhead" if device.type == "cuda" else "default"
        if device.type == "cuda":
            # CUDA graph trees record a step only when every input it writes in place has a static
            # address; the cache buffers are written (index_copy_) every step, so mark them, and
            # the token and position buffers (without guards: a new cache re-records, no recompile)
            for t in (self.tok, self.pos, *(b for layer in cache for b in layer.buffers)):
                torch._dynamo.mark_static_address(t, guard=False)
        if mode not in CompiledStep._compiled:
            CompiledStep._compiled[mode] = torch.compile(_decode_step, dynamic=False, mode=mode)
        self.fn = CompiledStep._compiled[mode]
        self.checked, self.skip_guards = False, True
        self(self.tok, 0)  # compile now; writes slot 0, which the prefill then overwrites

    @classmethod
    def create(cls, model, cache, batch: int, device: torch.device) -> CompiledStep | None:
        try:
            return cls(model, cache, batch, device)
        except Exception as e:  # noqa: BLE001 - any compiler failure: decode eagerly instead
            warnings.warn(f"decoding without torch.compile (compiling failed: {str(e).splitlines()[0]})",
                          stacklevel=3)
            return None

    def __call__(self, tokens: Tensor, pos: int) -> Tensor:
        self.tok.copy_(tokens)
        self.pos.fill_(pos)
        if self.checked and self.skip_guards and _CAN_SKIP_GUARDS:
            # Later calls feed the same model, cache and input tensors as the first, so the
            # guards would pass again; evaluating them costs ~0.2 ms per token on CPU. Nothing
            # is traced under this stance (no match raises instead), so the decode kernels need not
            # be set either (another ~0.13 ms per token).
            try:
                with torch.compiler.set_stance(skip_guard_eval_unsafe=True):
                    return self.fn(self.model, self.tok, self.pos, self.cache)
            except RuntimeError as e:  # the first call ran uncompiled (limit reached)
                if "skip_guard_eval_unsafe" not in str(e):
                    raise
                self.skip_guards = False
        with decode_kernels(self.model, compiled=True) if self.device.type == "cpu" else nullcontext():
            self.checked = True
            # The first call checks every guard and compiles if none match. One variant per
            # model structure, batch, cache length and dtype: allow more than dynamo's default
            # of 8 for this function before it falls back to running uncompiled.
            with torch._dynamo.config.patch(**{_limit_name(): RECOMPILE_LIMIT}):
                return self.fn(self.model, self.tok, self.pos, self.cache)


RECOMPILE_LIMIT = 64


def _limit_name() -> str:
    """dynamo's recompile limit setting: ``cache_size_limit`` before torch 2.7. (Asked when a step
    compiles, not at import: the first use of ``torch._dynamo`` imports it, ~0.9 s.)"""
    return "recompile_limit" if hasattr(torch._dynamo.config, "recompile_limit") else "cache_size_limit"


# torch < 2.6 cannot skip guard checks (2.6 added set_stance)
_CAN_SKIP_GUARDS = (hasattr(torch.compiler, "set_stance")
                    and "skip_guard_eval_unsafe" in inspect.signature(torch.compiler.set_stance).parameters)


def compiled_cache_len(needed: int, max_seq: int) -> int:
    """The cache length a compiled step uses: ``needed`` rounded up to a power of two (at
    least 64), at most ``max_seq``."""
    return min(max_seq, max(64, 1 << (needed - 1).bit_length()))


# Extra cache slots a call with a prompt cache allocates (or a quarter more, if larger), so that
# the next turn of a chat usually fits and fills the same cache in place instead of copying it.
PROMPT_CACHE_ROOM = 256

# Opt-in until measured on hardware: no GPU has been available to this project yet, so the
# captured step is covered by CPU tests of the tensor-position step it replays
# (tests/model/test_static_decode.py) and by tests/gpu/, which has not run. Set True to use it.
CUDA_GRAPHS = False


def _cache_and_step(model, B: int, needed: int, max_new: int, compile: bool, prompt_cache: PromptCache | None,
                    weights: tuple | None, device: torch.device) -> tuple[list, GraphStep | CompiledStep | None]:
    """The KV cache of a call that reaches ``needed`` positions, and the step that decodes into
    it (None: the eager forward). A prompt cache's own cache is reused in place when it has room;
    a compiled or captured step always gets a fresh one, since making it writes slot 0."""
    max_seq = model.cfg.max_seq
    stepper = max_new > 1 and (compile or (CUDA_GRAPHS and device.type == "cuda"))
    if prompt_cache is not None and not stepper:
        held = prompt_cache._with_room(weights, B, needed)
        if held is not None:
            return held, None
    if compile and max_new > 1:
        cache = model.make_cache(B, max_len=compiled_cache_len(needed, max_seq), device=device)
        return cache, CompiledStep.create(model, cache, B, device)
    # with a prompt cache, room for a few more turns, so the next call can fill it in place
    room = needed if prompt_cache is None else min(max_seq, needed + max(PROMPT_CACHE_ROOM, needed // 4))
    cache = model.make_cache(B, max_len=room, device=device)
    return cache, GraphStep.create(model, cache, B, device) if max_new > 1 else None


def _decode_loop(model, out: Tensor, T0: int, max_new: int, temperature: float, top_k, top_p,
                 stops: Tensor, pad: int | None, generator, compile: bool = False,
                 prompt_cache: PromptCache | None = None) -> Iterator[tuple[Tensor, Tensor]]:
    B, max_seq = out.shape[0], model.cfg.max_seq
    keep = max(1, max_seq // 2)
    done = torch.zeros(B, dtype=torch.bool, device=out.device)
    win = max(0, T0 - max_seq)  # window start in `out`
    # the cache holds what this call can reach, not always max_seq (which a pretrained model's
    # config may set to 8192 or more): allocating and zeroing that would dominate short replies
    needed = min(max_seq, T0 - win + max_new)
    weights = None if prompt_cache is None else weights_stamp(model)
    cache, graph = _cache_and_step(model, B, needed, max_new, compile, prompt_cache, weights, out.device)
    reused = 0 if prompt_cache is None else prompt_cache._take(model, weights, out[:, win:T0], cache)
    logits, _ = model(out[:, win + reused:T0], cache=cache, start_pos=reused, logits_to_keep=1)  # prefill
    n_ctx, cur, base = T0 - win, T0, win  # the cache holds out[:, base:base + n_ctx]
    for step in range(max_new):
        if prompt_cache is not None:  # kept up to date: the caller may stop the stream at any token
            prompt_cache._hold(weights, cache, out[:, base:base + n_ctx])
        nxt = sample_next(logits[:, -1], temperature, top_k, top_p, generator)
        if len(stops):
            nxt = torch.where(done, torch.full_like(nxt, pad), nxt)
            done = done | torch.isin(nxt, stops)
        out[:, cur] = nxt
        cur += 1
        yield out[:, :cur], nxt
        if step == max_new - 1 or (len(stops) and bool(done.all())):
            return
        if n_ctx == max_seq:  # window full: slide and rebuild the cache from the kept tokens
            logits, _ = model(out[:, cur - keep:cur], cache=cache, start_pos=0, logits_to_keep=1)
            n_ctx, base = keep, cur - keep
        elif graph is not None:
            logits = graph(nxt[:, None], n_ctx)
            n_ctx += 1
        else:
            logits, _ = model(nxt[:, None], cache=cache, start_pos=n_ctx)  # decode one token
            n_ctx += 1


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
    batch, squeeze = _as_batch(tokens, model)
    result = batch.to(torch.long)
    was_training = model.training
    model.eval()
    try:
        for buffer, _ in _run(model, batch, max_new, temperature, top_k, top_p, stop_ids, pad_id, generator,
                              compile, prompt_cache):
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
    batch, squeeze = _as_batch(tokens, model)
    was_training = model.training
    model.eval()
    try:
        for _, new in _run(model, batch, max_new, temperature, top_k, top_p, stop_ids, pad_id, generator, compile,
                           prompt_cache):
            yield new[0].clone() if squeeze else new.clone()
    finally:
        model.train(was_training)


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
    ``compile`` as in ``generate``)."""
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
        first = sample_next((logits[:, -1] + keep).float(), temperature, top_k, top_p, generator)
        x, max_new = torch.cat([x, first]), max_new - 1
        if stop_ids is not None and int(first) in set(stop_ids):
            max_new = 0
    out = generate(model, x, max_new, temperature, top_k, top_p, stop_ids, generator=generator,
                   compile=compile) if max_new else x
    return tokenizer.decode(out.tolist(), skip_special_tokens=True)

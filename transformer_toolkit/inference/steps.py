"""Decode steps: one new token for each of the first ``n`` rows of a KV cache -> their logits.

Every step is called as ``step(tokens, pos)``: ``tokens`` ``(n, 1)``, ``pos`` the position of
every row (an int) or of each row (a list: the requests of a continuous batch sit at different
positions). Three implementations:

- ``EagerStep``: the model's forward over a view of the cache's first ``n`` rows; any ``n`` and
  per-row positions (attention then spans the longest row, masked per row).
- ``CompiledStep``: the same forward compiled with torch.compile, for every row at one position.
- ``GraphStep``: the forward captured in a CUDA graph and replayed, for every row at one position.

The last two have one fixed shape (all rows, the whole cache buffer); ``Engine`` uses them when
every row decodes at one position (``generate``'s rows do) and the eager step otherwise.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import nullcontext

import torch
from torch import Tensor

from ..model.kernels import decode_kernels

# Opt-in until measured on hardware: no GPU has been available to this project yet, so the
# captured step is covered by CPU tests of the tensor-position step it replays
# (tests/model/test_static_decode.py) and by tests/gpu/, which has not run. Set True to use it.
CUDA_GRAPHS = False
RECOMPILE_LIMIT = 64


class EagerStep:
    """The model's own forward: the default step, and the one for rows at different positions."""

    per_row = True

    def __init__(self, model, cache: list):
        self.model, self.cache = model, cache
        self.slots = cache[0].buffers[0].shape[0]

    def __call__(self, tokens: Tensor, pos: int | list[int]) -> Tensor:
        n = tokens.shape[0]
        if isinstance(pos, int):
            cache = self.cache if n == self.slots else [c.view(slice(0, n)) for c in self.cache]
            return self.model(tokens, cache=cache, start_pos=pos)[0]
        # rows at their own positions: keys up to the longest row, masked per row
        cache = [c.view(slice(0, n), max(pos) + 1) for c in self.cache]
        start = torch.tensor(pos, dtype=torch.long, device=tokens.device)
        return self.model(tokens, cache=cache, start_pos=start)[0]


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

    per_row = False

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
    activations around them; what is left is streaming the weights. On CUDA the mode is
    ``reduce-overhead`` (CUDA graphs).
    The first call compiles (about 10-20 s on 2 CPU cores); ``create`` returns None, with a
    warning, where compiling fails (no C++ compiler, say), and decoding stays eager.
    """

    per_row = False
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

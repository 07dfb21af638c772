"""A CPU fast path for the matrix-vector products of small-batch decoding.

Decoding one token per row is a chain of ``x @ W.T`` with a handful of rows: the time goes into
streaming the weights from memory. On CPU, PyTorch's default kernel for a ``(1, in)`` input
against an ``nn.Linear`` weight ``(out, in)`` runs on one core and reaches about a third of the
memory bandwidth (measured on this project's 2-core AVX-512 machines: 8-13 GB/s of ~30).

- fp32: the output rows are split into one slice per thread, ``(n, out/n, in)``, and computed
  by one ``torch.bmm``, which runs the slices on all cores at once (26-30 GB/s). For
  ``in < out`` each slice is stored transposed and contiguous, ``(n, in, out/n)``, the faster
  layout for short rows; otherwise it is a zero-copy view of the weight.
- bf16: oneDNN's prepacked weight (``torch.ops.mkldnn``), 2-3x the default kernel.
- Sibling linears that read the same input (q/k/v, gate/up) are stacked into one weight and
  computed by one product (``_FastLinears``): at batch 1 a step pays per kernel call as well as
  per weight byte.

``decode_weights(model)`` builds these copies (one extra copy of the linear weights, so it is
skipped for models whose linear weights exceed ``MAX_BYTES``) and keeps them, outside the model,
for the next call until a weight changes: a new tensor (``model.to(...)``, ``p.data = ...``) or
an in-place update that bumps its version counter (optimizer steps, ``load_state_dict``,
``torch.no_grad()`` edits). Edits through ``p.data`` in place bypass the version counter, as they
bypass autograd, and are not seen. While active it routes every
``nn.Linear`` call with at most ``MAX_ROWS`` rows through them. Larger inputs (prefill), other
devices, autocast and training use the ordinary ``nn.Linear``. Results equal ``F.linear`` up to
float rounding (a different summation order).
"""

from __future__ import annotations

import warnings
import weakref
from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

MAX_ROWS = 8
MAX_BYTES = 2 * 1024**3


def _stamp(weight: Tensor) -> tuple[int, int]:
    """Changes when the weight's values may have changed: new storage or an in-place update."""
    return weight.data_ptr(), weight._version


def _untracked(params) -> bool:
    """Whether any of ``params`` is an inference tensor (made under ``torch.inference_mode()``):
    such tensors keep no version counter, so an in-place update of them cannot be seen. Warns."""
    if not any(p.is_inference() for p in params):
        return False
    warnings.warn("the model's parameters are inference tensors (created under torch.inference_mode()), "
                  "whose in-place updates cannot be tracked, so decoding runs without its cached weight "
                  "layout and prompt cache; create or load the model outside inference_mode "
                  "(torch.no_grad() is fine) to decode faster", stacklevel=4)
    return True


def weights_stamp(model: nn.Module) -> tuple | None:
    """A value that changes whenever any parameter of ``model`` is replaced or updated in place
    (an optimiser step, ``load_state_dict``, ``.to()``); None when that cannot be told
    (``_untracked``). Callers then recompute instead of reusing."""
    params = list(model.parameters())
    if _untracked(params):
        return None
    return (id(model),) + tuple((*_stamp(p), p.dtype) for p in params)


def _pack(weight: Tensor) -> Tensor | None:
    try:
        return torch.ops.mkldnn._reorder_linear_weight(weight, 1)
    except (RuntimeError, AttributeError):  # torch built without oneDNN
        return None


class _Layout:
    """``x @ weight.T + bias`` for inputs of a few rows, with the weight laid out for it."""

    def __init__(self, weight: Tensor, bias: Tensor | None):
        out, inp = weight.shape
        self.out, self.bias = out, bias
        self.slices = self.packed = None
        n = torch.get_num_threads()
        if weight.dtype == torch.float32 and out % n == 0:
            s = weight.view(n, out // n, inp).transpose(1, 2)  # (n, in, out/n)
            self.slices = s.contiguous() if inp < out else s
        else:
            self.packed = _pack(weight)
            if self.packed is None:
                self.slices = weight.t().unsqueeze(0)  # (1, in, out): one slice

    def __call__(self, x: Tensor) -> Tensor:
        if self.slices is None:
            return torch.ops.mkldnn._linear_pointwise(x, self.packed, self.bias, "none", [], "")
        rows = x.reshape(-1, x.shape[-1])  # (M, in)
        n = self.slices.shape[0]
        y = torch.bmm(rows.expand(n, *rows.shape), self.slices)  # (n, M, out/n): the slices on all cores
        if rows.shape[0] == 1:
            y = y.view(*x.shape[:-1], self.out)
        else:
            y = y.transpose(0, 1).reshape(*x.shape[:-1], self.out)
        return y if self.bias is None else y + self.bias


class _FastLinears:
    """The replacement ``forward`` of one ``nn.Linear``, or of a group of sibling linears that
    read the same input (an attention's q/k/v, a gated FFN's gate/up; see ``SIBLINGS``).

    A group multiplies by its stacked weights: the first member called computes every member's
    output in one product and keeps the others' until they are called with the same input
    tensor. At batch 1 a decode step is bound by per-kernel overhead as much as by the weight
    reads, and the stacked product halves the linear calls (Shakespeare shape: 43 to 25 per
    token). A member called with any other input, or again before its siblings, computes afresh,
    so the result never depends on the call order.
    """

    def __init__(self, linears: list[nn.Linear]):
        self.linears = linears
        ws = [lin.weight.detach() for lin in linears]
        self.dtype, self.stamps = ws[0].dtype, [_stamp(w) for w in ws]
        biases = [lin.bias for lin in linears]
        bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
        self.layout = _Layout(ws[0] if len(ws) == 1 else torch.cat(ws), bias)
        self.sizes = [lin.out_features for lin in linears]
        self.input, self.outputs, self.pending = None, None, set()

    def forward(self, i: int):
        """The forward of member ``i``."""
        return lambda x: self(i, x)

    def __call__(self, i: int, x: Tensor) -> Tensor:
        if x is self.input and i in self.pending and not torch.is_grad_enabled():
            return self._take(i)  # a sibling's call computed it from this very input just now
        lin = self.linears[i]
        if (x.dtype != self.dtype or x.shape[:-1].numel() > MAX_ROWS or torch.is_grad_enabled()
                or torch.is_autocast_enabled("cpu") or [_stamp(m.weight) for m in self.linears] != self.stamps):
            # not a decode step, or the weights changed since the layout was built (e.g. a
            # half-consumed stream() left the layout installed while training went on)
            return F.linear(x, lin.weight, lin.bias)
        if len(self.linears) == 1:
            return self.layout(x)
        self.input, self.pending = x, set(range(len(self.linears)))
        self.outputs = self.layout(x).split(self.sizes, dim=-1)
        return self._take(i)

    def _take(self, i: int) -> Tensor:
        self.pending.discard(i)
        y = self.outputs[i]
        if not self.pending:  # every member served: hold no tensors between steps
            self.input = self.outputs = None
        return y


# Sibling linears that read the same input, by attribute name within one module, first match
# first: attention (mha/gqa/mqa/flash), gated FFNs (and MoE shared experts), MLA's projections.
SIBLINGS = (("q_proj", "k_proj", "v_proj"), ("gate_proj", "up_proj"), ("q_proj", "kv_a_proj"),
            ("q_a_proj", "kv_a_proj"))


def _groups(model: nn.Module, linears: list[nn.Linear]) -> list[list[nn.Linear]]:
    """``linears`` in ``_FastLinears`` groups: the siblings of ``SIBLINGS`` together where their
    input width, dtype and use of a bias agree, every other linear alone."""
    eligible = {id(m) for m in linears}
    groups, grouped = [], set()
    for module in model.modules():
        for names in SIBLINGS:
            members = [getattr(module, n, None) for n in names]
            if (all(id(m) in eligible and id(m) not in grouped for m in members)
                    and len({(m.in_features, m.weight.dtype, m.bias is None) for m in members}) == 1):
                groups.append(members)
                grouped.update(id(m) for m in members)
                break
    return groups + [[m] for m in linears if id(m) not in grouped]


def _eligible(model: nn.Module) -> list[nn.Linear]:
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    if not linears or linears[0].weight.device.type != "cpu" or model.training:
        return []
    if _untracked([m.weight for m in linears]):
        return []  # a layout could go stale unseen
    if linears[0].weight.dtype not in (torch.float32, torch.bfloat16):
        return []
    if sum(m.weight.numel() * m.weight.element_size() for m in linears) > MAX_BYTES:
        return []
    return linears


# model -> its layouts; kept outside the model so copy.deepcopy, pickling and state dicts never
# see the (opaque, oneDNN) decode tensors, and dropped with the model.
_PLANS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _plan(model: nn.Module, linears: list[nn.Linear]) -> list[_FastLinears]:
    plan = _PLANS.get(model)
    if plan is None or sorted(id(m) for g in plan for m in g.linears) != sorted(map(id, linears)) or any(
            _stamp(m.weight) != s for g in plan for m, s in zip(g.linears, g.stamps, strict=True)):
        with torch.no_grad():
            plan = [_FastLinears(group) for group in _groups(model, linears)]
        _PLANS[model] = plan
    return plan


@contextmanager
def _forwards(linears: list[nn.Linear], forwards: list):
    """Within the block, each linear's calls go to its replacement forward."""
    for lin, fwd in zip(linears, forwards, strict=True):
        lin.forward = fwd
    try:
        yield
    finally:
        for lin in linears:
            del lin.forward  # back to nn.Linear.forward


def decode_weights(model: nn.Module):
    """Within the block, small-batch ``nn.Linear`` calls of an eval-mode CPU model use
    decode-friendly copies of the weights (see the module docstring). Elsewhere a no-op."""
    plan = _plan(model, _eligible(model))
    linears = [m for group in plan for m in group.linears]
    return _forwards(linears, [group.forward(i) for group in plan for i in range(len(group.linears))])


# ---------------------------------------------------------------------------------------------
# The compiled decode step (``generate(..., compile=True)``) uses a third form, written for
# torch.compile rather than for eager kernels: ``(x[..., None, :] * W).sum(-1)`` over the weight
# as it is, ``(out, in)``. Inductor turns it into one vectorised reduction per output row, fused
# with the operations around it, that streams the weight at 23 GB/s in fp32 and 35 GB/s in bf16
# on this project's 2-core machines (the 43 linears of the README's Shakespeare shape, one row),
# where the eager matrix-vector kernels reach 9-18 GB/s. No copy of the weight is made.


# Up to how many rows the dot-product form beats what the compiled graph does otherwise (an
# ATen/oneDNN matmul), per weight dtype; measured in whole compiled decode steps of the
# Shakespeare shape: fp32 wins at 1, 2 and 8 rows (1.4-2.2x); bf16 at 1 and 2 rows (1.2-2x),
# loses at 4 and 8 (0.8-0.9x), where oneDNN's bf16 kernel reads the weight once for all rows.
ROWDOT_MAX_ROWS = {torch.float32: 8, torch.bfloat16: 2}


def _rowdot_forward(self: nn.Linear, x: Tensor) -> Tensor:
    if x.shape[:-1].numel() > ROWDOT_MAX_ROWS.get(x.dtype, 1):
        return F.linear(x, self.weight, self.bias)
    y = (x.unsqueeze(-2) * self.weight).sum(-1, dtype=torch.float32).to(x.dtype)
    return y if self.bias is None else y + self.bias


def rowdot_linears(model: nn.Module):
    """Within the block, every ``nn.Linear`` of ``model`` computes an input of at most
    ``ROWDOT_MAX_ROWS`` rows as dot products (the form above), larger ones with ``F.linear``;
    meant to be traced by torch.compile."""
    linears = [m for m in model.modules() if type(m) is nn.Linear]
    return _forwards(linears, [_rowdot_forward.__get__(lin) for lin in linears])

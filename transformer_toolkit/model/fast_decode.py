"""The decode kernels of the linear layers (chosen by ``kernels.decode_kernels``), on CPU.

Decoding one token per row is a chain of ``x @ W.T`` with a handful of rows: the time goes into
streaming the weights from memory, and PyTorch's default kernel for a one-row input runs on
one core at a fraction of the memory bandwidth. So an eager decode step uses a layout of each
weight made for it (``decode_plan``):

- fp32: the output rows split into one slice per thread, ``(n, out/n, in)``, computed by one
  ``torch.bmm``, which runs the slices on all cores at once. For ``in < out`` each slice is
  stored transposed and contiguous, ``(n, in, out/n)``, the faster layout for short rows;
  otherwise it is a zero-copy view of the weight.
- bf16: oneDNN's prepacked weight (``torch.ops.mkldnn``).
- Sibling linears that read the same input (q/k/v, gate/up) are stacked into one weight and
  computed by one product (``_FastLinears``): at batch 1 a step pays per kernel call as well as
  per weight byte.

The layouts are one extra copy of the linear weights, so models whose linear weights exceed
``MAX_BYTES`` go without. They are kept outside the model for the next call until a weight
changes: a new tensor (``model.to(...)``, ``p.data = ...``) or an in-place update that bumps its
version counter (optimizer steps, ``load_state_dict``, ``torch.no_grad()`` edits). Edits through
``p.data`` in place bypass the version counter, as they bypass autograd, and are not seen.
Inputs of more than ``MAX_ROWS`` rows (prefill), other devices, autocast and training use
``F.linear``. Results equal ``F.linear`` up to float rounding (a different summation order).

A compiled decode step uses ``rowdot`` instead, written for torch.compile rather than for eager
kernels. The measured figures are in the README (Performance, "Kernel choices").
"""

from __future__ import annotations

import warnings
import weakref

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
    (an optimiser step, ``load_state_dict``, ``.to()``) or an adapter is switched on or off;
    None when that cannot be told (``_untracked``). Callers then recompute instead of reusing."""
    params = list(model.parameters())
    if _untracked(params):
        return None
    # modules that can change the function without touching a weight: LoRA adapters switched
    # off (``lora.disabled``) say so through ``adapted()``
    switches = tuple(m.adapted() for m in model.modules() if callable(getattr(m, "adapted", None)))
    return (id(model), switches) + tuple((*_stamp(p), p.dtype) for p in params)


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
    """The decode kernel of one linear, or of a group of sibling linears that read the same
    input (an attention's q/k/v, a gated FFN's gate/up; see ``SIBLINGS``).

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

    def kernel(self, i: int):
        """The kernel of member ``i``: a function of ``(linear, x)`` (see ``kernels.Linear``)."""
        return lambda linear, x: self(i, x)

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


def _eligible(model: nn.Module, linears: list[nn.Linear]) -> list[nn.Linear]:
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


def decode_plan(model: nn.Module, linears: list[nn.Linear]) -> dict:
    """``{linear: kernel}`` for the ``linears`` of an eval-mode CPU ``model`` that an eager decode
    step should compute through a decode layout (empty where none applies)."""
    plan = _plan(model, _eligible(model, linears))
    return {lin: group.kernel(i) for group in plan for i, lin in enumerate(group.linears)}


# The compiled decode step (``generate(..., compile=True)``) computes a linear as
# ``(x[..., None, :] * W).sum(-1)`` over the weight as it is, ``(out, in)``: Inductor turns it into
# one vectorised reduction per output row, fused with the operations around it, that streams the
# weight faster than the eager matrix-vector kernels. No copy of the weight is made.
# Up to how many rows the dot-product form beats the matmul the compiled graph makes otherwise,
# per weight dtype: in bf16, oneDNN's kernel reads the weight once for all rows and wins from 4.
ROWDOT_MAX_ROWS = {torch.float32: 8, torch.bfloat16: 2}


def rowdot(linear: nn.Linear, x: Tensor) -> Tensor:
    """``linear(x)`` as row dot products for inputs of at most ``ROWDOT_MAX_ROWS`` rows (the
    form above, meant to be traced by torch.compile), ``F.linear`` for larger ones."""
    if x.shape[:-1].numel() > ROWDOT_MAX_ROWS.get(x.dtype, 1):
        return F.linear(x, linear.weight, linear.bias)
    y = (x.unsqueeze(-2) * linear.weight).sum(-1, dtype=torch.float32).to(x.dtype)
    return y if linear.bias is None else y + linear.bias

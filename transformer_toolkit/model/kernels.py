"""Which kernel computes each hot operation of the model, chosen in one place.

Most choices follow from the inputs (device, dtype, whether autograd records, how many keys);
the one the inputs cannot tell, whether a forward is a decode step, is made explicitly by the
caller with ``decode_kernels(model)``, which ``generation`` enters around its decode loop and
its compiled step. Nothing is patched at run time: every linear layer of the model is a
``Linear``, whose forward runs the kernel set on it (or ``F.linear``), and attention reads the
mode from its ``AttnContext``. The measured figures behind each threshold are in the README
(Performance, "Kernel choices").

- linears: ``F.linear``; in an eager CPU decode step the layouts of fast_decode.py; in a
  compiled CPU decode step row dot products that Inductor fuses;
- attention (``attend``): PyTorch's SDPA, except two batched matmuls around a softmax for CPU
  training over few keys, fp32 SDPA for a half-precision CPU decode step (and bf16 training
  of short sequences), and fp32 matmuls for one query in a compiled CPU decode step;
- stacked experts (``grouped_mm``): ``torch._grouped_mm`` where it runs natively, a batched
  matmul over gathered experts for a few rows in a traced or captured step, else a loop.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.nn.attention import SDPBackend

from . import fast_decode

DECODE, COMPILED_DECODE = "decode", "compiled_decode"


# linear layers -----------------------------------------------------------------------------------
class Linear(nn.Linear):
    """``nn.Linear`` whose product a decode kernel may compute (``decode_kernels`` sets
    ``kernel``, a function of ``(linear, x)``); the same parameters and state dict, and
    ``F.linear`` whenever no kernel is set."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.kernel = None

    def forward(self, x: Tensor) -> Tensor:
        if self.kernel is not None:
            return self.kernel(self, x)
        return F.linear(x, self.weight, self.bias)


@contextmanager
def decode_kernels(model: nn.Module, compiled: bool = False):
    """Within the block, ``model`` (eval mode, on the CPU) runs its decode kernels:

    - ``compiled=False``: small-batch linear products use the decode layouts of
      fast_decode.py (weights split across threads or prepacked, sibling linears stacked);
    - ``compiled=True`` (while torch.compile traces a decode step): linears of a few rows
      as row dot products and the attention of one query as two fp32 matmuls.

    Elsewhere (another device, training, larger inputs) the usual kernels run."""
    linears = [m for m in model.modules() if isinstance(m, Linear)]
    if compiled:
        on_cpu = bool(linears) and linears[0].weight.device.type == "cpu"
        kernels = dict.fromkeys(linears if on_cpu else [], fast_decode.rowdot)
    else:
        kernels = fast_decode.decode_plan(model, linears)
    saved = [(lin, lin.kernel) for lin in kernels]
    mode = getattr(model, "kernel_mode", None)
    for lin, kernel in kernels.items():
        lin.kernel = kernel
    if hasattr(model, "kernel_mode"):
        model.kernel_mode = COMPILED_DECODE if compiled else DECODE
    try:
        yield
    finally:
        for lin, kernel in saved:
            lin.kernel = kernel
        if hasattr(model, "kernel_mode"):
            model.kernel_mode = mode


# attention ---------------------------------------------------------------------------------------
# Longest key length at which CPU training runs _matmul_attention, per dtype: beyond it the
# (T, S) scores it keeps for the backward cost more than the fused kernel's blocked backward.
MATMUL_ATTENTION_MAX_KEYS = {torch.bfloat16: 512, torch.float32: 128}

# attn="flash": fused kernels only, never the unfused math path
FUSED = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION]


def attend(q: Tensor, k: Tensor, v: Tensor, ctx, dropout_p: float = 0.0, scale: float | None = None,
           fused_only: bool = False) -> Tensor:
    """Scaled dot-product attention of q ``(B, H, T, d)`` over k, v ``(B, KV, S, d)``; ``ctx``
    (an ``attention.AttnContext``) gives the mask, causality and kernel mode.

    ``fused_only`` (``attn="flash"``) leaves out ``_matmul_attention``, so only fused kernels run.
    """
    if (ctx.kernels == COMPILED_DECODE and q.shape[2] == 1 and q.device.type == "cpu"
            and dropout_p == 0.0):
        return _one_query(q, k, v, ctx.mask, scale)
    if not fused_only and _matmul_pays(q, k, v):
        return _matmul_attention(q, k, v, ctx.mask, ctx.is_causal, scale, dropout_p)
    if _fp32_pays(q):
        mask = ctx.mask if ctx.mask is None or ctx.mask.dtype == torch.bool else ctx.mask.float()
        with torch.autocast("cpu", enabled=False):  # autocast would cast the inputs back to bf16
            y = _sdpa(q.float(), k.float(), v.float(), mask, ctx.is_causal, scale, dropout_p)
        return y.to(q.dtype)
    return _sdpa(q, k, v, ctx.mask, ctx.is_causal, scale, dropout_p)


def _fp32_pays(q: Tensor) -> bool:
    """Whether a CPU attention call in bf16 or fp16 should run the fused kernel in fp32 instead:
    a decode step (one query per row: PyTorch's fused CPU kernel is slow for a single
    half-precision query, and from 4 queries on it is the faster again), or bf16 training of
    short sequences where ``_matmul_attention`` does not run (e.g. ``attn="flash"``: the fused
    kernel's bf16 backward is slow on short blocks and catches up with length)."""
    if q.device.type != "cpu" or q.dtype not in (torch.bfloat16, torch.float16):
        return False
    if q.shape[2] == 1:
        return True
    return q.dtype == torch.bfloat16 and q.requires_grad and q.shape[2] <= (512 if q.shape[3] <= 32 else 128)


def _matmul_pays(q: Tensor, k: Tensor, v: Tensor) -> bool:
    """Whether this call is CPU training over few enough keys for ``_matmul_attention``."""
    limit = MATMUL_ATTENTION_MAX_KEYS.get(q.dtype, 0)
    return (q.device.type == "cpu" and k.shape[2] <= limit and torch.is_grad_enabled()
            and (q.requires_grad or k.requires_grad or v.requires_grad))


def _matmul_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, is_causal: bool,
                      scale: float | None, dropout_p: float) -> Tensor:
    """Attention as ``softmax(q k^T * scale + mask) @ v`` with the ``(T, S)`` scores in memory.

    For short sequences on CPU this beats the fused kernel, whose backward walks small blocks:
    here the work is two batched matmuls forward and four backward, and the softmax in between.
    The ``G = H / KV`` query heads that share a key head are stacked as rows of one product, so
    grouped keys are never repeated. Everything runs in q's dtype (in bf16 the softmax
    accumulates in fp32 and the scores are rounded to bf16 first, as in Megatron-LM's and HF's
    unfused attention). ``mask``: None, bool (True = attend) or additive, broadcastable to
    ``(B, H, T, S)``; ``is_causal`` (with no mask) hides the keys after each query, T == S.
    Every query must see at least one key (true of every mask the model builds).
    """
    B, H, T, d = q.shape
    KV, S = k.shape[1], k.shape[2]
    G = H // KV
    with torch.autocast(q.device.type, enabled=False):  # keep one dtype: no casts around each op
        k, v = k.to(q.dtype), v.to(q.dtype)
        q = q * (scale if scale is not None else d ** -0.5)  # scale the smaller operand
        s = (q.reshape(B, KV, G * T, d) @ k.transpose(-1, -2)).view(B, H, T, S)
        if mask is not None:
            s = s + (torch.where(mask, 0.0, float("-inf")) if mask.dtype == torch.bool else mask).to(s.dtype)
        elif is_causal:
            s = s + torch.full((T, S), float("-inf"), dtype=s.dtype, device=s.device).triu_(1)
        p = torch.softmax(s, dim=-1)
        if dropout_p > 0.0:
            p = F.dropout(p, dropout_p)
        return (p.view(B, KV, G * T, S) @ v).view(B, H, T, v.shape[-1])


def _one_query(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None, scale: float | None) -> Tensor:
    """Attention of one new token per row (a compiled CPU decode step) as two small fp32 matmuls:
    torch.compile cannot fuse into PyTorch's fused CPU kernel, which is built for blocks of
    queries and costs more for a single bf16 query than streaming the layer's weights. The
    query heads that share a key head form the rows of one product (``_matmul_attention`` with
    one query row per head). ``mask``: None, bool ``(..., 1, S)`` (True = attend) or additive,
    broadcastable to ``(B, H, 1, S)``."""
    return _matmul_attention(q.float(), k.float(), v.float(), mask, False, scale, 0.0).to(q.dtype)


def _sdpa(q, k, v, mask, is_causal, scale, dropout_p) -> Tensor:
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal, scale=scale,
                                          dropout_p=dropout_p, enable_gqa=q.shape[1] != k.shape[1])


# stacked experts ---------------------------------------------------------------------------------
# (device type, dtype, in, out) -> whether torch._grouped_mm accepted it (it needs 16-byte aligned rows)
_GROUPED_MM_OK: dict[tuple, bool] = {}


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype matmuls on ``x``'s device run in: the autocast dtype when autocast is on."""
    dev = x.device.type
    return torch.get_autocast_dtype(dev) if torch.is_autocast_enabled(dev) else x.dtype


def native_grouped_mm(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether ``torch._grouped_mm`` runs its own kernel, with no host sync: on CPU, and on CUDA
    for bf16 on compute capability 9.x / 10.x (Hopper, Blackwell). Elsewhere on CUDA it falls
    back to a loop that copies ``offs`` to the host, which a CUDA-graph capture cannot hold."""
    if device.type != "cuda":
        return True
    return dtype == torch.bfloat16 and torch.cuda.get_device_capability(device)[0] in (9, 10)


def grouped_mm(x: Tensor, w: Tensor, offs: Tensor) -> Tensor:
    """Rows ``offs[e-1]:offs[e]`` of ``x`` (N, D_in) times ``w[e]`` (D_in, D_out) -> (N, D_out).

    Uses ``torch._grouped_mm`` where the device and dtype support it (``native_grouped_mm``);
    a few rows in a compiled or CUDA-graph decode step otherwise run as one batched matmul; the
    rest falls back to a loop over the slices (which reads ``offs`` on the host).
    Runs in the autocast dtype when autocast is on, like ``torch.matmul`` would.
    """
    dt = compute_dtype(x)
    x, w = x.to(dt), w.to(dt)
    # while torch.compile traces: its shape rule for _grouped_mm takes bf16 only, and a host
    # read of offs would break the graph
    native, compiling = native_grouped_mm(x.device, dt), torch.compiler.is_compiling()
    use_grouped = native and (dt == torch.bfloat16 or not compiling)
    no_sync = (compiling and not use_grouped) or (x.is_cuda and not native and torch.cuda.is_current_stream_capturing())
    if no_sync and x.shape[0] <= 64:
        # a few rows (a compiled or captured decode step): one batched matmul with each row's
        # expert gathered, no host sync
        rows = torch.arange(x.shape[0], device=x.device)
        expert = torch.searchsorted(offs, rows, right=True)  # offs[e-1] <= row < offs[e]
        return torch.bmm(x.unsqueeze(1), w[expert]).squeeze(1)
    key = (x.device.type, dt, w.shape[-2], w.shape[-1])
    if use_grouped and _GROUPED_MM_OK.get(key, True):
        try:
            return torch._grouped_mm(x, w, offs=offs)
        except (RuntimeError, NotImplementedError):
            _GROUPED_MM_OK[key] = False
    bounds = [0] + offs.tolist()
    return torch.cat([x[bounds[e]:bounds[e + 1]] @ w[e] for e in range(w.shape[0])])

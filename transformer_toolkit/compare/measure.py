"""What the report says of one trained variant, besides its losses: size, speed, memory, cache.

- parameters, total and active (experts a token does not pass through are not active);
- peak memory while training: the allocator's peak on CUDA, the process's peak resident set
  (high-water mark, reset before the run where Linux allows) on a CPU;
- KV-cache bytes per token (batch 1, the model's dtype): what a long context costs in memory;
- batch-1 decode tokens/s: the time of N new tokens less the time of one (so the prompt's
  prefill is left out), best of three;
- tokens/s and the validation curve, read back from the run's ``metrics.jsonl``.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
import time
from pathlib import Path

import torch

from ..trainer.mfu import idle_expert_params


def parameters(model) -> tuple[int, int]:
    """``(total, active)`` parameter counts (shared tensors once)."""
    total = sum(p.numel() for p in model.parameters())
    return total, total - idle_expert_params(model)


def kv_bytes_per_token(model) -> int:
    """Bytes the decode cache holds per token of context, summed over layers (batch 1)."""
    return sum(layer.bytes_per_token() for layer in model.make_cache(1, max_len=1))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def decode_tokens_per_s(model, prompt: list[int], n: int) -> float | None:
    """Greedy batch-1 decoding speed, tokens/s, over ``n`` new tokens (fewer when the context is
    shorter); None when the context leaves room for fewer than 2."""
    from ..generation import generate

    n = min(n, model.cfg.max_seq - len(prompt))
    if n < 2:
        return None
    device = next(model.parameters()).device
    ids = torch.tensor([prompt], device=device)

    def timed(k: int) -> float:
        _sync(device)
        t0 = time.perf_counter()
        generate(model, ids, max_new=k, temperature=0)
        _sync(device)
        return time.perf_counter() - t0

    timed(n)  # warm-up: first-call allocations and the decode weight layouts
    one = min(timed(1) for _ in range(3))
    many = min(timed(n) for _ in range(3))
    return (n - 1) / max(many - one, 1e-9)


_CLEAR_REFS = "/proc/self/clear_refs"


def matmul_rates(dtype: torch.dtype, sizes=(1024, 2048), repeats: int = 3) -> dict[int, float]:
    """The best ``torch.mm`` FLOP/s of ``n x n`` matrices in ``dtype``, for each ``n`` in ``sizes``."""
    rates = {}
    for n in sizes:
        a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
        torch.mm(a, b)  # warm-up: the first call picks the kernel
        best = 0.0
        for _ in range(repeats):
            t0 = time.perf_counter()
            torch.mm(a, b)
            best = max(best, 2 * n**3 / max(time.perf_counter() - t0, 1e-9))
        rates[n] = best
    return rates


def matmul_peak(dtype: torch.dtype, sizes=(1024, 2048), repeats: int = 3) -> float:
    """This CPU's matmul peak in ``dtype`` (FLOP/s): the best of ``matmul_rates``. A CPU has no
    datasheet peak the Trainer knows, so MFU on a CPU is measured against this."""
    return max(matmul_rates(dtype, sizes, repeats).values())


def reset_peak_memory(device: torch.device) -> None:
    """Start a fresh peak: the allocator's on CUDA; on Linux, the resident high-water mark."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open(_CLEAR_REFS, "w") as f:
            f.write("5")  # "5": reset the peak RSS to the current RSS (Linux >= 4.0, proc(5))
    except OSError:
        pass  # elsewhere the peak counts from the process start (each variant runs in its own process)


def peak_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what)``: the peak since ``reset_peak_memory``."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "CUDA allocated"
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024, "process RSS"
    except OSError:
        pass
    scale = 1 if os.uname().sysname == "Darwin" else 1024  # ru_maxrss: bytes on macOS, kB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale, "process RSS"


def read_metrics(folder: str | os.PathLike) -> list[dict]:
    path = Path(folder) / "metrics.jsonl"
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:  # a line cut short by a crash
            continue
    return out


def training_speed(records: list[dict]) -> float | None:
    """Median training tokens/s over the logged windows (the Trainer counts step time only)."""
    rates = [r["tok_s"] for r in records if r.get("event") == "train" and r.get("tok_s")]
    return float(statistics.median(rates)) if rates else None


def curve(records: list[dict], tokens_per_step: int, flops_per_token: float) -> list[dict]:
    """The validation points of a run: step, tokens, FLOPs, seconds trained and loss."""
    out = []
    for r in records:
        if r.get("event") == "eval" and r.get("val_loss") is not None:
            tokens = r["step"] * tokens_per_step
            out.append({"step": r["step"], "tokens": tokens, "flops": tokens * flops_per_token,
                        "elapsed": r.get("elapsed"), "val_loss": r["val_loss"]})
    return out

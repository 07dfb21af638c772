"""Which arithmetic a run uses: the device, the autocast dtype and whether fp16 needs a GradScaler.

Weights and optimiser state are always fp32 ("master weights"); autocast only lowers the
precision of matmuls and attention inside the forward pass.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch

from .config import TrainConfig

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """``"auto"``: this process's GPU (``LOCAL_RANK`` under torchrun) when CUDA is available,
    else the CPU. Any other string is passed to ``torch.device``."""
    if name != "auto":
        dev = torch.device(name)
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r} but CUDA is not available; use device='auto' or 'cpu'")
        return dev
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def cpu_has_native_bf16() -> bool:
    """True when the CPU has bf16 dot-product instructions (AVX512-BF16 or AMX); without them
    bf16 autocast on CPU is emulated and slower than fp32."""
    cpu = getattr(torch, "cpu", None)
    for probe in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(cpu, probe, None)
        try:
            if fn is not None and fn():
                return True
        except RuntimeError:
            pass
    return False


@dataclass(frozen=True)
class Precision:
    """The resolved arithmetic of a run: ``name`` is "fp32", "bf16" or "fp16"."""

    name: str
    device: torch.device

    @property
    def dtype(self) -> torch.dtype:
        return DTYPES[self.name]

    @property
    def needs_scaler(self) -> bool:
        # fp16 has 5 exponent bits: small gradients underflow unless the loss is scaled up.
        return self.name == "fp16"

    def autocast(self):
        """The forward-pass context: autocast to ``dtype``, or nothing for fp32."""
        if self.name == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def make_scaler(self) -> torch.amp.GradScaler | None:
        return torch.amp.GradScaler(self.device.type) if self.needs_scaler else None


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """``cfg.precision`` when set (an explicit choice is honoured or refused, never changed);
    otherwise ``mixed_precision`` picks the fastest safe option for ``device``."""
    if cfg.precision is not None:
        if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ValueError("precision='bf16' but this GPU has no bf16 support; use precision='fp16' "
                             "(with loss scaling) or 'fp32'")
        return Precision(cfg.precision, device)
    if not cfg.mixed_precision:
        return Precision("fp32", device)
    if device.type == "cuda":
        return Precision("bf16" if torch.cuda.is_bf16_supported() else "fp16", device)
    if device.type == "cpu" and cpu_has_native_bf16():
        return Precision("bf16", device)
    return Precision("fp32", device)

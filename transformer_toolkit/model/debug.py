"""Debug views of a Transformer: a summary at construction, a forward trace, gradient and
weight statistics. They read tensors back to the host, so they are for inspection only."""

from __future__ import annotations

import math

import torch
from torch import Tensor

BAR = 20


def _bar(frac: float) -> str:
    n = round(frac * BAR)
    return "█" * n + "░" * (BAR - n)


def fmt_count(n: int) -> str:
    """``30210000`` -> ``"30.21M"``."""
    for div, unit in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


def print_summary(model) -> None:
    cfg = model.cfg
    groups: dict[str, int] = {"embed": model.embed.weight.numel()}
    if model.pos is not None and any(True for _ in model.pos.parameters()):
        groups["pos"] = sum(p.numel() for p in model.pos.parameters())
    groups["blocks"] = sum(p.numel() for p in model.blocks.parameters())
    groups["norm"] = sum(p.numel() for p in model.norm.parameters())
    if not cfg.tie_weights:
        groups["head"] = model.head.weight.numel()
    total = sum(groups.values())
    print("\n  🏗️  Model summary")
    print(f"  {'params':<18} {model.n_params()}")
    for key in ("dim", "n_layers", "n_heads", "n_kv_heads", "attn", "ffn", "norm", "pos_enc", "tie_weights"):
        print(f"  {key:<18} {getattr(cfg, key)}")
    print(f"  entropy check → should be > 90% of log(vocab_size) = {math.log(cfg.vocab_size):.2f} at init")
    print("\n  parameter breakdown:")
    for name, n in groups.items():
        print(f"  {name:<9} {_bar(n / total)}  {fmt_count(n)}  {100 * n / total:.1f}%")
    print()


def _stats(t: Tensor) -> str:
    t = t.detach().float()
    return f"min={t.min().item():+.2f}  mean={t.mean().item():+.2f}  max={t.max().item():+.2f}"


class ForwardTrace:
    """Prints shapes, value ranges, per-block update ratios and output entropy of one forward."""

    def __init__(self, tokens: Tensor, x: Tensor):
        print("\n  🔬 Forward pass debug")
        print(f"  tokens   {list(tokens.shape)}  {str(tokens.dtype).replace('torch.', '')}")
        print(f"  embed    {list(x.shape)}  {str(x.dtype).replace('torch.', '')}  {_stats(x)}")

    def block(self, i: int, x_in: Tensor, x_out: Tensor) -> None:
        ratio = ((x_out - x_in).float().norm() / x_in.float().norm().clamp_min(1e-12)).item()
        health = "healthy" if 0.01 <= ratio <= 2.0 else "check: outside 0.01–2.0"
        print(f"  block {i}  residual update norm ratio: {ratio:.3f}   ← {health}")

    def finish(self, logits: Tensor) -> None:
        lf = logits.detach().float()
        print(f"  logits   {list(logits.shape)}  {str(logits.dtype).replace('torch.', '')}  {_stats(lf)}")
        logp = lf.log_softmax(dim=-1)
        entropy = -(logp.exp() * logp).sum(-1).mean().item()
        max_ent = math.log(logits.shape[-1])
        pct = 100 * entropy / max_ent
        note = "healthy at init" if pct > 90 else "low for an untrained model: check the logit scale"
        print(f"  entropy  {entropy:.3f} / max {max_ent:.2f}  ({pct:.1f}% of uniform)   ← {note}\n")


def print_gradients(model) -> None:
    print("\n  🩺 Gradient health")
    total = 0.0
    for name, p in model.named_parameters():
        if p.grad is None:
            print(f"  {name:<48} no grad")
            continue
        g = p.grad.detach().float()
        norm = g.norm().item()
        total += norm**2
        flag = ""
        if not torch.isfinite(g).all():
            flag = "  ✗ NaN/inf"
        elif norm == 0.0:
            flag = "  ⚠ zero"
        elif norm > 10.0:
            flag = "  ⚠ large"
        print(f"  {name:<48} norm={norm:.3e}  max|g|={g.abs().max().item():.2e}{flag}")
    print(f"  total grad norm {math.sqrt(total):.3e}\n")


def print_weights(model) -> None:
    print("\n  ⚖️  Weight statistics")
    for name, p in model.named_parameters():
        w = p.detach().float()
        flag = "  ✗ NaN/inf" if not torch.isfinite(w).all() else ""
        std = w.std().item() if w.numel() > 1 else 0.0
        print(f"  {name:<48} {list(p.shape)!s:<18} mean={w.mean().item():+.3e}  std={std:.3e}  "
              f"max|w|={w.abs().max().item():.2e}{flag}")
    print()

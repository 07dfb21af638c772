"""Cross-entropy for training, from logits in their own dtype.

``F.cross_entropy(logits.float(), ...)`` under bf16 autocast walks the ``(tokens, vocab)``
logits six times: the fp32 copy, the log-softmax, then in backward a zero-filled gradient for
the picked entries, the log-softmax backward and the cast of the gradient back to bf16.
``cross_entropy_sum`` computes the same loss and gradient in three: a log-softmax that reads
the logits as they are and writes fp32 log-probabilities, then in backward
``exp(log p)`` written straight in the logits' dtype and scaled in place; only the picked
entries (one per token) are corrected, in fp32, as ``p - 1``. Measured on 2 cores: 58 against
101 ms for 2048 x 8000 bf16 logits, 191 against 286 ms for 1024 x 50304, forward plus backward.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import once_differentiable


class _CrossEntropySum(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits: Tensor, targets: Tensor, weights: Tensor) -> Tensor:
        with torch.autocast(logits.device.type, enabled=False):
            logp = torch.log_softmax(logits, dim=-1, dtype=weights.dtype)  # (N, V), fp32 (or float64)
            picked = logp.gather(1, targets[:, None]).squeeze(1)  # (N,)
            loss = -(picked * weights).sum()
        ctx.save_for_backward(logp, targets, weights, picked)
        ctx.logits_dtype = logits.dtype
        return loss

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss: Tensor):
        logp, targets, weights, picked = ctx.saved_tensors
        coef = grad_loss * weights  # (N,): d loss / d (token loss)
        grad = torch.empty(logp.shape, dtype=ctx.logits_dtype, device=logp.device)
        torch.exp(logp, out=grad)  # softmax, written in the logits' dtype
        grad.mul_(coef.to(grad.dtype)[:, None])
        rows = torch.arange(len(targets), device=targets.device)
        grad[rows, targets] = ((picked.exp() - 1) * coef).to(grad.dtype)  # p - 1 at the target, in fp32
        return grad, None, None


def cross_entropy_sum(logits: Tensor, targets: Tensor, ignore_index: int = -100,
                      weights: Tensor | None = None) -> Tensor:
    """Sum over tokens of ``weight * -log softmax(logits)[target]``, in fp32 (float64 stays float64).

    ``logits`` ``(..., V)`` in any float dtype (bf16 under autocast is not copied to fp32 first);
    ``targets`` ``(...)``, where ``ignore_index`` marks tokens that are not trained;
    ``weights`` ``(...)``, optional per-token weights (a loss mask). Equals
    ``(F.cross_entropy(logits.float(), targets, ignore_index=..., reduction="none") * weights).sum()``
    and its gradient, which comes back in the logits' dtype.
    """
    V = logits.shape[-1]
    logits, targets = logits.reshape(-1, V), targets.reshape(-1)
    keep = targets != ignore_index
    w = keep.to(torch.float64 if logits.dtype == torch.float64 else torch.float32)  # also the loss's dtype
    if weights is not None:
        w = w * weights.reshape(-1).to(w.dtype)
    safe = torch.where(keep, targets, torch.zeros_like(targets))  # ignored rows weigh 0 anyway
    return _CrossEntropySum.apply(logits, safe, w)

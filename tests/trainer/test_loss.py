"""cross_entropy_sum: the same loss and gradient as F.cross_entropy on fp32 logits."""

import pytest
import torch
import torch.nn.functional as F
from model_helpers import spy_dtypes

from transformer_toolkit.trainer.loss import cross_entropy_sum


def _reference(logits, targets, weights=None):
    per = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=-100,
                          reduction="none")
    return (per if weights is None else per * weights.reshape(-1)).sum()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("masked", [False, True])
def test_loss_and_gradient_equal_f_cross_entropy(dtype, masked):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(3, 5, 11, generator=g) * 3).to(dtype)
    targets = torch.randint(0, 11, (3, 5), generator=g)
    targets[0, :2] = -100  # ignored tokens
    weights = torch.rand(3, 5, generator=g) if masked else None
    a = logits.clone().requires_grad_()
    b = logits.clone().requires_grad_()
    ours = cross_entropy_sum(a, targets, weights=weights)
    ref = _reference(b, targets, weights)
    assert ours.dtype == torch.float32
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    (ours * 0.37).backward()
    (ref * 0.37).backward()
    assert a.grad.dtype == dtype
    tol = dict(atol=1e-7, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(a.grad.float(), b.grad.float(), **tol)
    assert torch.all(a.grad[0, :2] == 0)  # ignored tokens get no gradient


def test_a_confident_right_answer_keeps_its_small_gradient_in_bf16():
    # p(target) = 0.999: p - 1 is computed in fp32, so bf16 rounding of p does not zero it
    logits = torch.tensor([[9.0, 2.0, 1.0]], dtype=torch.bfloat16, requires_grad=True)
    cross_entropy_sum(logits, torch.tensor([0])).backward()
    ref = torch.softmax(logits.detach().float(), -1)[0, 0] - 1
    assert logits.grad[0, 0] < 0
    torch.testing.assert_close(logits.grad[0, 0].float(), ref, rtol=1e-2, atol=0)


def test_gradcheck_in_float64():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(4, 6, dtype=torch.float64, generator=g, requires_grad=True)
    targets = torch.tensor([1, -100, 5, 0])
    weights = torch.rand(4, dtype=torch.float64, generator=g)
    assert torch.autograd.gradcheck(lambda x: cross_entropy_sum(x, targets, weights=weights), (logits,))


def test_under_autocast_the_logits_are_not_copied_to_fp32(monkeypatch):
    seen = spy_dtypes(monkeypatch, torch, "log_softmax")
    w = torch.randn(11, 8, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = torch.randn(6, 8) @ w.t()
        loss = cross_entropy_sum(logits, torch.randint(0, 11, (6,)))
    loss.backward()
    assert seen == [torch.bfloat16] and loss.dtype == torch.float32 and w.grad is not None


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_blocks_of_rows_give_the_same_loss_and_gradient(dtype, monkeypatch):
    """Several blocks (and a shorter last one) equal the reference, as one block does."""
    from transformer_toolkit.trainer import loss as L

    monkeypatch.setattr(L, "BLOCK_ELEMENTS", {"cpu": 3 * 13})  # 3 rows of 13 per block: 7 rows -> 3, 3, 1
    g = torch.Generator().manual_seed(2)
    logits = (torch.randn(7, 13, generator=g) * 4).to(dtype)
    targets = torch.randint(0, 13, (7,), generator=g)
    targets[4] = -100
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ref = cross_entropy_sum(a, targets), _reference(b, targets)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    ours.backward()
    ref.backward()
    tol = dict(atol=1e-7, rtol=1e-5) if dtype == torch.float32 else dict(atol=2e-3, rtol=1e-2)
    torch.testing.assert_close(a.grad.float(), b.grad.float(), **tol)


def test_masked_vocabulary_entries_and_large_logits_stay_exact():
    """-inf logits (a vocabulary entry masked out, even the first) and logits in the thousands:
    the loss is still F.cross_entropy's and the gradient finite, 0 at the masked entries."""
    logits = torch.tensor([[float("-inf"), 2.0, 1.0, 0.5], [3000.0, 2990.0, -3000.0, float("-inf")]])
    targets = torch.tensor([1, 1])
    a, b = logits.clone().requires_grad_(), logits.clone().requires_grad_()
    ours, ref = cross_entropy_sum(a, targets), _reference(b, targets)
    torch.testing.assert_close(ours, ref, rtol=1e-6, atol=1e-5)
    ours.backward()
    ref.backward()
    assert torch.isfinite(a.grad).all() and a.grad[0, 0] == 0 and a.grad[1, 3] == 0
    torch.testing.assert_close(a.grad, b.grad, atol=1e-7, rtol=1e-5)


def test_no_full_size_fp32_array_is_allocated_for_bf16_logits(monkeypatch):
    """The point of the blocks: besides the bf16 logits and their bf16 gradient, nothing of the
    (tokens, vocab) size is made; fp32 work stays in one block-sized buffer."""
    from torch.utils._python_dispatch import TorchDispatchMode

    from transformer_toolkit.trainer import loss as L

    N, V = 64, 500
    monkeypatch.setattr(L, "BLOCK_ELEMENTS", {"cpu": 8 * V})
    sizes = []

    class Record(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in out if isinstance(out, (tuple, list)) else (out,):
                if isinstance(t, torch.Tensor):
                    sizes.append((t.dtype, t.numel()))
            return out

    logits = torch.randn(N, V, dtype=torch.bfloat16, requires_grad=True)
    with Record():
        cross_entropy_sum(logits, torch.randint(0, V, (N,))).backward()
    big_fp32 = [n for dt, n in sizes if dt == torch.float32 and n > 8 * V]
    assert big_fp32 == [], big_fp32
    assert logits.grad.dtype == torch.bfloat16 and logits.grad.shape == (N, V)

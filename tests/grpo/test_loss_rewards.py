"""The GRPO objective against TRL's formulas (re-derived here from its docs), and the rewards."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transformer_toolkit.grpo import GRPOConfig, char_match, exact_match, numeric_answer, regex_match
from transformer_toolkit.grpo.loss import group_advantages, grpo_token_loss, reduce_loss
from transformer_toolkit.grpo.rewards import check_columns, resolve, score


def trl_reference(logps, old, ref, adv, mask, beta, eps_low, eps_high, loss_type, max_len):
    """TRL GRPOTrainer's loss written out from its documentation: ratio exp(logp - old), two-sided
    clip, -min, + beta * (exp(ref - logp) - (ref - logp) - 1), then per loss type."""
    out = torch.empty_like(logps)
    B, T = logps.shape
    for b in range(B):
        for t in range(T):
            r = math.exp(logps[b, t] - old[b, t])
            a = float(adv[b])
            term = -min(r * a, min(max(r, 1 - eps_low), 1 + eps_high) * a)
            if beta:
                d = float(ref[b, t] - logps[b, t])
                term += beta * (math.exp(d) - d - 1)
            out[b, t] = term
    m = mask
    if loss_type == "grpo":
        return ((out * m).sum(-1) / m.sum(-1).clamp(min=1)).mean()
    if loss_type == "dapo":
        return (out * m).sum() / m.sum()
    return (out * m).sum() / (B * max_len)


@pytest.mark.parametrize("loss_type", ["dapo", "grpo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_matches_trl_formula(loss_type, beta):
    g = torch.Generator().manual_seed(0)
    B, T = 6, 5
    logps = -torch.rand(B, T, generator=g, dtype=torch.float64) * 3
    old = logps + 0.4 * torch.randn(B, T, generator=g, dtype=torch.float64)  # ratios well outside the clip range
    ref = logps + 0.3 * torch.randn(B, T, generator=g, dtype=torch.float64)
    adv = torch.randn(B, generator=g, dtype=torch.float64)
    mask = (torch.rand(B, T, generator=g) > 0.3).double()
    mask[:, 0] = 1
    want = trl_reference(logps, old, ref, adv, mask, beta, 0.2, 0.28, loss_type, T)
    x = logps.clone().requires_grad_(True)
    token_loss, diag = grpo_token_loss(x, adv, old, ref, beta, 0.2, 0.28)
    num, den = reduce_loss(token_loss, mask, loss_type, T)
    got = num / den
    assert torch.allclose(got, want, atol=1e-12)
    # the gradient of the same formula, by autograd through the reference
    x2 = logps.clone().requires_grad_(True)
    trl_grad = torch.autograd.grad(_trl_autograd(x2, old, ref, adv, mask, beta, loss_type, T), x2)[0]
    assert torch.allclose(torch.autograd.grad(got, x)[0], trl_grad, atol=1e-12)
    assert diag["clipped"].sum() > 0  # the case exercises clipping


def _trl_autograd(logps, old, ref, adv, mask, beta, loss_type, T):
    ratio = torch.exp(logps - old)
    a = adv[:, None]
    per = -torch.minimum(ratio * a, torch.clamp(ratio, 0.8, 1.28) * a)
    if beta:
        per = per + beta * (torch.exp(ref - logps) - (ref - logps) - 1)
    if loss_type == "grpo":
        return ((per * mask).sum(-1) / mask.sum(-1)).mean()
    if loss_type == "dapo":
        return (per * mask).sum() / mask.sum()
    return (per * mask).sum() / (logps.shape[0] * T)


def test_one_step_is_reinforce_with_group_baseline():
    """With old = current (mu = 1) the ratio is 1 and the gradient is -A per token / token count."""
    logps = torch.randn(4, 3, dtype=torch.float64).requires_grad_(True)
    adv = torch.tensor([1.0, -1.0, 0.5, 0.0], dtype=torch.float64)
    mask = torch.ones(4, 3, dtype=torch.float64)
    loss, diag = grpo_token_loss(logps, adv)
    num, den = reduce_loss(loss, mask, "dapo", 3)
    assert torch.allclose(num / den, -adv.mean())
    grad = torch.autograd.grad(num / den, logps)[0]
    assert torch.allclose(grad, -adv[:, None].expand(4, 3) / 12)
    assert diag["clipped"].sum() == 0 and diag["kl"].abs().sum() == 0


def test_group_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 2.0])
    adv, std = group_advantages(r, 4)
    s = torch.tensor([1.0, 0, 0, 0]).std()  # unbiased, as TRL
    assert torch.allclose(adv[:4], (torch.tensor([1.0, 0, 0, 0]) - 0.25) / (s + 1e-4))
    assert torch.equal(adv[4:], torch.zeros(4)) and torch.equal(std[4:], torch.zeros(4))
    centred, _ = group_advantages(r, 4, scale="none")
    assert torch.allclose(centred[:4], torch.tensor([0.75, -0.25, -0.25, -0.25]))


def test_builtin_rewards():
    p = ["q"] * 4
    assert exact_match(p, [" 42 ", "42.", "4 2", "42"], answer=["42"] * 4) == [1.0, 0.0, 0.0, 1.0]
    assert numeric_answer(p, ["it is 1,234", "1234.0", "12", "none"], answer=["1234"] * 4) == [1.0, 1.0, 0.0, 0.0]
    assert regex_match(p, ["cat dog", "catdog", "a cat", "dog"], answer=["cat"] * 4) == [1.0, 0.0, 1.0, 0.0]
    assert regex_match(p[:2], ["<a>12</a>", "12"], pattern=[r"<a>\d+</a>"] * 2) == [1.0, 0.0]
    msgs = [[{"role": "assistant", "content": "7"}]]
    assert exact_match(["q"], msgs, answer=["7"]) == [1.0]  # conversational completions, as TRL passes them
    # partial credit: position by position, over the longer of completion and answer
    assert char_match(p, [" 1127 ", "1137", "127", "11270"], answer=["1127"] * 4) == [1.0, 0.75, 0.25, 0.8]
    assert char_match(["q"] * 2, ["", [{"role": "assistant", "content": "dog cat"}]], answer=["", "dog cat"]) == [1.0,
                                                                                                                1.0]
    check_columns(resolve(["char_match"]), {"answer"})
    with pytest.raises(ValueError, match="'char_match' needs the column answer"):
        check_columns(resolve(["char_match"]), {"solution"})


@settings(max_examples=200, deadline=None)
@given(st.text("0123456789 ab", max_size=8), st.text("0123456789 ab", max_size=8))
def test_char_match_is_graded_exact_match(completion, answer):
    """In [0, 1], 1 exactly when exact_match is, and every wrong or missing character costs."""
    score_, exact = char_match(["q"], [completion], answer=[answer])[0], exact_match(["q"], [completion], [answer])[0]
    assert 0.0 <= score_ <= 1.0
    assert (score_ == 1.0) == (exact == 1.0)
    got, want = completion.strip(), answer.strip()
    if want and got != want:
        fixed = want[:len(got)] if len(got) <= len(want) else want  # a prefix of the answer, or the answer itself
        assert char_match(["q"], [fixed], answer=[answer])[0] >= score_


def test_bad_reward_functions_fail_clearly():
    def boom(prompts, completions, **kw):
        raise KeyError("solution")

    def short(prompts, completions, **kw):
        return [1.0]

    def text(prompts, completions, **kw):
        return ["high"] * len(completions)

    for fn, match in ((boom, "'boom' raised KeyError"), (short, "returned 1 values for 3"),
                      (text, "not a number")):
        with pytest.raises((RuntimeError, ValueError), match=match):
            score(resolve([fn]), [1.0], ["p"] * 3, ["c"] * 3, {"answer": ["a"] * 3})
    with pytest.raises(ValueError, match="unknown reward 'exact'"):
        resolve(["exact"])


def test_missing_columns_named():
    with pytest.raises(ValueError, match="needs the column answer"):
        check_columns(resolve(["exact_match"]), {"solution"})

    def needs_solution(prompts, completions, solution, **kw):
        return [0.0] * len(completions)

    with pytest.raises(ValueError, match="needs the column solution"):
        check_columns(resolve([needs_solution]), {"answer"})
    check_columns(resolve(["regex_match"]), {"pattern"})  # either column is enough


def test_group_size_one_refused():
    with pytest.raises(ValueError, match="group_size >= 2"):
        GRPOConfig(group_size=1)

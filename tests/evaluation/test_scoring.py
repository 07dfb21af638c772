"""The scoring engine gives the full forward's log-probabilities in every variant and on both
paths (shared-context cache, padded batches), truncates like lm-eval, and its rolling windows
are lm-eval's."""

from __future__ import annotations

import random

import pytest
import torch

from transformer_toolkit import Transformer, TransformerConfig
from transformer_toolkit.evaluation import generate_until, loglikelihoods, rolling_windows

VARIANTS = {
    "gqa_rope": dict(attn="gqa", n_kv_heads=2),
    "mla": dict(attn="mla", latent_dim=16),
    "alibi": dict(pos_enc="alibi"),
    "learned": dict(pos_enc="learned", norm="layernorm", ffn="ffn", bias=True),
    "sinusoidal": dict(pos_enc="sinusoidal"),
    "moe": dict(ffn="moe", n_experts=4, top_k=2),
    "moe_ec": dict(ffn="moe_ec", n_experts=4, top_k=2),
}
MAX = 24


def _model(**kw) -> Transformer:
    return Transformer(TransformerConfig(vocab_size=100, dim=32, n_layers=2, n_heads=4, max_seq=MAX, **kw)).eval()


def _reference(model, ctx, cont):
    """One request alone, no cache, no padding: the last MAX + 1 tokens, log-softmax over all."""
    full = (ctx + cont)[-(MAX + 1):]
    logp = torch.log_softmax(model(torch.tensor([full[:-1]]))[0][0].float(), -1)[-len(cont):]
    target = torch.tensor(cont)
    return logp.gather(-1, target[:, None]).sum().item(), bool((logp.argmax(-1) == target).all())


def _requests(rng: random.Random):
    reqs = []
    for _ in range(12):  # contexts with 1-4 continuations each: both the shared and the batched path
        ctx = [rng.randrange(100) for _ in range(rng.randint(1, 20))]
        for _ in range(rng.randint(1, 4)):
            reqs.append((ctx, [rng.randrange(100) for _ in range(rng.randint(1, 10))]))
    return reqs


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loglikelihoods_equal_the_full_forward(variant):
    model = _model(**VARIANTS[variant])
    reqs = _requests(random.Random(0))
    truncated = []
    got = loglikelihoods(model, reqs, batch_tokens=64, batch_size=5, on_truncate=lambda n, m: truncated.append(n))
    for (ctx, cont), (lp, greedy) in zip(reqs, got, strict=True):
        ref_lp, ref_greedy = _reference(model, ctx, cont)
        assert lp == pytest.approx(ref_lp, abs=1e-4)
        assert greedy == ref_greedy
    assert truncated == [len(c) + len(t) for c, t in reqs if len(c) + len(t) > MAX + 1]


def test_greedy_flag_and_per_token_values():
    model = _model()
    ctx = [5, 6, 7]
    with torch.no_grad():
        logits = model(torch.tensor([ctx]))[0][0, -1]
    best, other = int(logits.argmax()), int(logits.argmin())
    (lp_best, g_best), (lp_other, g_other) = loglikelihoods(model, [(ctx, [best]), (ctx, [other])])
    assert g_best and not g_other and lp_best > lp_other
    per = loglikelihoods(model, [(ctx, [best, other, 3])], per_token=True)[0]
    total = loglikelihoods(model, [(ctx, [best, other, 3])])[0][0]
    assert per.shape == (3,) and per.sum().item() == pytest.approx(total)


def test_bad_requests_are_refused():
    model = _model()
    with pytest.raises(ValueError, match="non-empty"):
        loglikelihoods(model, [([], [1])])
    with pytest.raises(ValueError, match="longer than the model's context"):
        loglikelihoods(model, [([1], list(range(MAX + 1)))])


@pytest.mark.parametrize("n", [0, 1, 5, MAX - 1, MAX, MAX + 1, 3 * MAX + 7])
def test_rolling_windows_score_every_token_once_with_full_context(n):
    ids = list(range(1000, 1000 + n))
    windows = rolling_windows(ids, prefix=7, max_len=MAX)
    assert [t for _, cont in windows for t in cont] == ids
    for i, (ctx, cont) in enumerate(windows):
        assert 1 <= len(cont) <= MAX
        assert len(ctx) + len(cont) <= MAX + 1
        if i == 0:
            assert ctx == [7]
        else:  # as much context as fits, ending right before the continuation
            assert ctx == ids[:ids.index(cont[0])][-(MAX + 1 - len(cont)):]


def test_rolling_windows_are_lm_evals():
    utils = pytest.importorskip("lm_eval.utils")
    rng = random.Random(3)
    for _ in range(30):
        ids = [rng.randrange(50) for _ in range(rng.randint(1, 90))]
        L = rng.randint(1, 20)
        theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(ids, 7, L, 1)]
        assert rolling_windows(ids, 7, L) == [(list(a), list(b)) for a, b in theirs]


def _decode(ids):  # ids as text: "12 7 40"
    return " ".join(map(str, ids))


def _alone(model, prompts, max_new):
    """Each prompt decoded greedily by itself (the lockstep generate of one row)."""
    return [model.generate(torch.tensor([p]), max_new=max_new, temperature=0)[0, len(p):].tolist() for p in prompts]


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_generate_until_batched_equals_one_at_a_time(variant):
    """Prompts of any lengths share the batch, each row at its own position, and more prompts
    than rows wait for a freed slot; each reply is the one the prompt gets alone."""
    model = _model(**VARIANTS[variant])
    rng = random.Random(4)
    prompts = [[rng.randrange(100) for _ in range(rng.choice([1, 3, 5, 8, 13]))] for _ in range(9)]
    alone = _alone(model, prompts, 10)
    # stop ids that end rows at different steps: their slots go to the waiting prompts
    stops = {alone[0][2], alone[3][6]}
    want = [next((a[:k] for k, t in enumerate(a) if t in stops), a) for a in alone]
    assert len({len(w) for w in want}) > 1
    got = generate_until(model, prompts, decode=_decode, max_new=10, stop_ids=sorted(stops), batch_size=4)
    assert got == want


def test_generate_until_stop_strings_end_each_row_on_its_own():
    model = _model()
    rng = random.Random(5)
    prompts = [[rng.randrange(100) for _ in range(n)] for n in (4, 11, 7)]
    alone = _alone(model, prompts, 12)
    text_stop = f" {alone[1][2]} {alone[1][3]}"  # completed by row 1's fourth token
    got = generate_until(model, prompts, decode=_decode, max_new=12, stop_texts=[text_stop])
    for a, g in zip(alone, got, strict=True):
        cut = next((k + 1 for k in range(len(a)) if text_stop in _decode(a[:k + 1])), len(a))
        assert g == a[:cut]
    assert len(got[1]) <= 4 < len(alone[1])


def test_generate_until_prefills_a_shared_prefix_once():
    """Prompts that start alike (few-shot examples) prefill only what each adds."""
    model = _model()
    rng = random.Random(6)
    shots = [rng.randrange(100) for _ in range(14)]
    prompts = [shots + [rng.randrange(100) for _ in range(3)] for _ in range(5)]
    fed = []
    hook = model.embed.register_forward_hook(lambda m, args, out: fed.append(args[0].numel()))
    try:
        got = generate_until(model, prompts, decode=_decode, max_new=5, batch_size=2)
    finally:
        hook.remove()
    assert got == _alone(model, prompts, 5)
    prefilled = sum(n for n in fed if n > 2)  # decode steps feed one token per row (at most 2 rows)
    assert prefilled < sum(len(p) for p in prompts) - 3 * len(shots)

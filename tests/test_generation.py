"""Cached generation against an independent uncached reference, sampling, stop ids, errors."""

from __future__ import annotations

import pytest
import torch
from model_helpers import ATTN_X_POS, FFNS, NORMS, tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.generation import sample_next

MAX_SEQ = 32  # tiny_config's max_seq
B = 3


def make_model(head_scale: float = 20.0, **overrides) -> Transformer:
    """A tiny model with spread-out, context-dependent logits: an untied head scaled up, a
    larger init and noisy norm scales, so greedy argmax is far from ties and does not collapse
    to repeating one token (a tied head at init mostly predicts the current token again)."""
    overrides = dict(tie_weights=False, init_std=0.05) | overrides
    model = Transformer(tiny_config(**overrides))
    assert model.cfg.max_seq == MAX_SEQ
    with torch.no_grad():
        model.head.weight.mul_(head_scale)
        for p in model.parameters():
            if p.dim() == 1:  # norm scales (and biases)
                p.add_(0.3 * torch.randn_like(p))
    return model.eval()


def prompt(batch: int, length: int, vocab: int = 97, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, vocab, (batch, length), generator=g)


@torch.no_grad()
def greedy_reference(model: Transformer, tokens: torch.Tensor, max_new: int) -> torch.Tensor:
    """Greedy decoding with the full, uncached forward and the documented window rule:
    the context starts at max(0, T0 - max_seq); after each new token, if the context had
    reached max_seq it restarts at the last max_seq // 2 tokens, else it grows by one."""
    max_seq = model.cfg.max_seq
    seq = tokens.clone()
    start = max(0, tokens.shape[1] - max_seq)
    for _ in range(max_new):
        context = seq[:, start:]
        logits, _ = model(context)
        nxt = logits[:, -1].argmax(dim=-1)
        seq = torch.cat([seq, nxt[:, None]], dim=1)
        if context.shape[1] == max_seq:
            start = seq.shape[1] - max_seq // 2
    return seq


def assert_same_tokens(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    assert got.shape == want.shape, f"{what}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    if not torch.equal(got, want):
        bad = (got != want).any(dim=0).nonzero()[0].item()
        raise AssertionError(f"{what}: first mismatch at position {bad}: got {got[:, bad].tolist()}, "
                             f"want {want[:, bad].tolist()}")


# greedy cached generation == uncached reference ---------------------------------------------

@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_greedy_generation_matches_uncached_reference(attn, pos):
    model = make_model(attn=attn, pos_enc=pos)
    x = prompt(B, 5)
    # 5 + 45 tokens: the context fills to max_seq, slides to max_seq // 2, fills and slides again
    got = model.generate(x, 45, temperature=0)
    assert_same_tokens(got, greedy_reference(model, x, 45), f"{attn}/{pos}")
    # the generated continuation is not degenerate (a constant token would hide window bugs)
    assert got[:, 5:].unique().numel() > 3


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_greedy_generation_prompt_longer_than_max_seq(attn, pos):
    model = make_model(attn=attn, pos_enc=pos)
    x = prompt(B, MAX_SEQ + 8, seed=2)
    got = model.generate(x, 20, temperature=0)
    assert torch.equal(got[:, :MAX_SEQ + 8], x)
    assert_same_tokens(got, greedy_reference(model, x, 20), f"{attn}/{pos} long prompt")


def test_window_rule_is_observable():
    """Sanity check of the reference: a different window rule (slide by one token) gives a
    different greedy sequence here, so the equality tests above do discriminate."""
    model = make_model(attn="mha", pos_enc="rope")
    x = prompt(B, 5)
    got = model.generate(x, 45, temperature=0)

    seq = x.clone()
    with torch.no_grad():
        for _ in range(45):
            logits, _ = model(seq[:, -MAX_SEQ:])
            seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert not torch.equal(seq, got)
    # before the first slide both rules see the same context
    assert torch.equal(seq[:, :5 + 28], got[:, :5 + 28])


@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("pos", ["rope", "alibi"])
@pytest.mark.parametrize("ffn", [f for f in FFNS if f != "moe_ec"])
def test_greedy_generation_every_ffn(ffn, pos, norm):
    model = make_model(attn="gqa", pos_enc=pos, ffn=ffn, norm=norm)
    x = prompt(B, 5)
    got = model.generate(x, 45, temperature=0)
    assert_same_tokens(got, greedy_reference(model, x, 45), f"{ffn}/{pos}/{norm}")


# expert choice -------------------------------------------------------------------------------

@pytest.mark.parametrize("pos", ["rope", "alibi", "learned"])
def test_moe_ec_generation(pos):
    model = make_model(attn="gqa", pos_enc=pos, ffn="moe_ec")
    x = prompt(B, 5)
    with torch.no_grad():
        full, _ = model(x)
    first = model.generate(x, 1, temperature=0)
    assert first.shape == (B, 6)
    assert torch.equal(first[:, -1], full[:, -1].argmax(-1))

    out = model.generate(x, 45, temperature=0)
    assert out.shape == (B, 50)
    assert torch.equal(out[:, :5], x)
    assert int(out.min()) >= 0 and int(out.max()) < model.cfg.vocab_size
    assert torch.equal(out[:, :6], first)

    # every step that follows a (re)prefill conditions on a fresh expert-choice forward over the
    # window, which the uncached forward reproduces exactly
    start, n_ctx, prefilled = 0, 5, True
    with torch.no_grad():
        for step in range(45):
            cur = 5 + step
            if prefilled:
                logits, _ = model(out[:, start:cur])
                assert torch.equal(out[:, cur], logits[:, -1].argmax(-1)), f"step {step}"
            if n_ctx == MAX_SEQ:
                start, n_ctx, prefilled = cur + 1 - MAX_SEQ // 2, MAX_SEQ // 2, True
            else:
                n_ctx, prefilled = n_ctx + 1, False


def _changes_earlier_logits(model: Transformer, x: torch.Tensor, t: int) -> float:
    x2 = x.clone()
    x2[:, t:] = (x[:, t:] + 1 + torch.randint(0, model.cfg.vocab_size - 1, x[:, t:].shape)) % model.cfg.vocab_size
    with torch.no_grad():
        a, _ = model(x)
        b, _ = model(x2)
    return (a[:, :t] - b[:, :t]).abs().max().item()


def test_expert_choice_is_not_causal_but_token_choice_is():
    ec_leaks = []
    for seed in range(12):
        torch.manual_seed(seed)
        x = torch.randint(0, 97, (1, 16))
        ec = make_model(ffn="moe_ec", moe_capacity=1.0)
        ec_leaks.append(_changes_earlier_logits(ec, x, 15))
        tc = make_model(ffn="moe")
        for t in (1, 8, 15):
            assert _changes_earlier_logits(tc, x, t) < 1e-5, f"moe is not causal (seed {seed}, t={t})"
    assert max(ec_leaks) > 1e-3, f"expert choice never leaked the future: {ec_leaks}"


# causality and the cache ---------------------------------------------------------------------

@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_causal(attn, pos):
    model = make_model(attn=attn, pos_enc=pos)
    x = prompt(2, 12)
    for t in (1, 6, 11):
        x2 = x.clone()
        x2[:, t:] = (x[:, t:] + 7) % 97
        with torch.no_grad():
            a, _ = model(x)
            b, _ = model(x2)
        torch.testing.assert_close(a[:, :t], b[:, :t], atol=1e-5, rtol=0)
        assert (a[:, t] - b[:, t]).abs().max() > 1e-3  # the change is visible where it happens


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_chunked_cache_equals_full_forward(attn, pos):
    model = make_model(head_scale=1.0, attn=attn, pos_enc=pos)  # logits of order 1 for atol 1e-5
    x = prompt(2, 20)
    with torch.no_grad():
        full, _ = model(x)
        for k in (1, 7, 19):
            cache = model.make_cache(2)
            a, _ = model(x[:, :k], cache=cache, start_pos=0)
            b, _ = model(x[:, k:], cache=cache, start_pos=k)
            torch.testing.assert_close(torch.cat([a, b], 1), full, atol=1e-5, rtol=0)
        # several chunks, including a single-token decode in the middle
        cache = model.make_cache(2)
        bounds = [0, 3, 4, 9, 10, 20]
        parts = [model(x[:, s:e], cache=cache, start_pos=s)[0] for s, e in zip(bounds[:-1], bounds[1:], strict=True)]
        torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_logits_to_keep_gives_the_last_positions_and_prefill_uses_only_the_last():
    model = make_model(attn="gqa")
    x = prompt(2, 12)
    with torch.no_grad():
        full, _ = model(x)
        for n in (1, 5, 12):
            torch.testing.assert_close(model(x, logits_to_keep=n)[0], full[:, -n:], atol=1e-5, rtol=0)
        cache = model.make_cache(2)
        part, _ = model(x, cache=cache, start_pos=0, logits_to_keep=3)
        torch.testing.assert_close(part, full[:, -3:], atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="logits_to_keep must be >= 0"):
        model(x, logits_to_keep=-1)
    head_rows = []
    model.head.register_forward_hook(lambda mod, inp, out: head_rows.append(inp[0].shape[1]))
    model.generate(x, 3, temperature=0)
    assert head_rows == [1, 1, 1]  # the 12-token prefill computes one row of logits, like each step


# shapes and contract -------------------------------------------------------------------------

def test_output_length_and_prompt_preserved():
    model = make_model()
    x = prompt(B, 5)
    for n in (1, 3, 30, 50):
        out = model.generate(x, n, temperature=1.0, top_k=10)
        assert out.shape == (B, 5 + n) and out.dtype == torch.long
        assert torch.equal(out[:, :5], x)
    long = prompt(2, MAX_SEQ + 13)
    out = model.generate(long, 7, temperature=0)
    assert out.shape == (2, MAX_SEQ + 20) and torch.equal(out[:, :MAX_SEQ + 13], long)


def test_one_dim_input_and_zero_new():
    model = make_model()
    x = prompt(1, 6)[0]
    out = model.generate(x, 4, temperature=0)
    assert out.shape == (10,)
    assert torch.equal(out, model.generate(x[None], 4, temperature=0)[0])
    out_list = model.generate(x.tolist(), 4, temperature=0)
    assert torch.equal(out_list, out)
    assert torch.equal(model.generate(x, 0), x)
    xb = prompt(2, 6)
    same = model.generate(xb, 0)
    assert torch.equal(same, xb)
    assert same.data_ptr() != xb.data_ptr()  # a copy, not the caller's tensor


def test_int32_prompt():
    model = make_model()
    x = prompt(2, 5)
    assert torch.equal(model.generate(x.int(), 6, temperature=0), model.generate(x, 6, temperature=0))


# sampling --------------------------------------------------------------------------------------

def test_greedy_settings_equal_argmax_path():
    model = make_model()
    x = prompt(B, 5)
    greedy = model.generate(x, 20, temperature=0)
    assert torch.equal(model.generate(x, 20, temperature=1.0, top_k=1), greedy)
    assert torch.equal(model.generate(x, 20, temperature=3.0, top_k=1, top_p=0.5), greedy)
    assert torch.equal(greedy, greedy_reference(model, x, 20))
    logits = torch.randn(50, 97)
    assert torch.equal(sample_next(logits, temperature=0), logits.argmax(-1))
    assert torch.equal(sample_next(logits, temperature=5.0, top_k=1), logits.argmax(-1))


def _draws(logits_row: torch.Tensor, n: int, seed: int = 0, **kw) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return sample_next(logits_row.expand(n, -1).clone(), generator=g, **kw)


def test_top_p():
    logits = torch.tensor([0.5, 0.3, 0.15, 0.05]).log()[None]
    perm = torch.tensor([2, 0, 3, 1])  # not sorted, so the sort/scatter is exercised
    shuffled = logits[:, perm]  # id j holds probability of original perm[j]
    ids = {0: 1, 1: 3, 2: 0, 3: 2}  # original id -> shuffled id

    s = _draws(logits, 4000, top_p=0.7)
    assert set(s.tolist()) == {0, 1}
    s = _draws(logits, 4000, top_p=0.85)
    assert set(s.tolist()) == {0, 1, 2}
    s = _draws(logits, 4000, top_p=1.0)
    assert set(s.tolist()) == {0, 1, 2, 3}
    s = _draws(shuffled, 4000, top_p=0.7)
    assert set(s.tolist()) == {ids[0], ids[1]}
    # renormalised over the nucleus: 0.5 / 0.8 and 0.3 / 0.8
    frac0 = (_draws(logits, 4000, top_p=0.7) == 0).float().mean().item()
    assert abs(frac0 - 0.625) < 0.04

    rand = torch.randn(200, 97) * 3
    g = torch.Generator().manual_seed(3)
    assert torch.equal(sample_next(rand, top_p=1e-6, generator=g), rand.argmax(-1))
    assert torch.equal(sample_next(rand, temperature=2.0, top_p=1e-6, generator=g), rand.argmax(-1))


def test_top_k():
    logits = torch.randn(500, 11)
    g = torch.Generator().manual_seed(0)
    s = sample_next(logits, temperature=5.0, top_k=2, generator=g)
    top2 = logits.topk(2, dim=-1).indices
    assert (s[:, None] == top2).any(-1).all()
    assert (s != logits.argmax(-1)).any()  # the second largest is sampled too
    # top_k larger than the vocabulary is no restriction
    row = torch.tensor([[0.0, 0.0, 0.0]])
    assert set(_draws(row, 600, top_k=10).tolist()) == {0, 1, 2}


def test_seeded_sampling_reproducible():
    logits = torch.randn(64, 97)
    a = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    b = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(7))
    c = sample_next(logits, 1.0, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)

    model = make_model()
    x = prompt(B, 5)
    kw = dict(temperature=1.0, top_k=50, top_p=0.95)
    o1 = model.generate(x, 30, generator=torch.Generator().manual_seed(11), **kw)
    o2 = model.generate(x, 30, generator=torch.Generator().manual_seed(11), **kw)
    o3 = model.generate(x, 30, generator=torch.Generator().manual_seed(12), **kw)
    assert torch.equal(o1, o2) and not torch.equal(o1, o3)


def test_temperature_changes_distribution():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]])
    s = _draws(logits, 2000, seed=5, temperature=2.0)
    freq = torch.bincount(s, minlength=4).float() / 2000
    hot = (logits / 2.0).softmax(-1)[0]
    plain = logits.softmax(-1)[0]
    d_hot, d_plain = (freq - hot).abs().sum().item(), (freq - plain).abs().sum().item()
    assert d_hot < 0.08 and d_hot < d_plain / 3, (freq, hot, plain)
    s = _draws(logits, 2000, seed=5, temperature=0.5)
    freq = torch.bincount(s, minlength=4).float() / 2000
    assert (freq - (logits / 0.5).softmax(-1)[0]).abs().sum() < 0.06


# stop ids --------------------------------------------------------------------------------------

def test_stop_ids_pad_and_early_stop():
    model = make_model()
    x = prompt(4, 5)
    n = 12
    greedy = model.generate(x, n, temperature=0)
    new = greedy[:, 5:]
    # pick a stop id: row 0 emits it (first at step s0 <= 3) and row 1 never does
    choice = None
    for step in range(4):
        sid = int(new[0, step])
        if sid not in new[1].tolist():
            choice = sid
            break
    assert choice is not None, f"no usable stop id in {new.tolist()}"
    pad = (choice + 1) % 97
    first = {r: (new[r] == choice).nonzero()[0].item() if (new[r] == choice).any() else None for r in range(4)}

    out = model.generate(x, n, temperature=0, stop_ids=[choice], pad_id=pad)
    assert out.shape == (4, 5 + n)  # row 1 never stops: full length
    assert torch.equal(out[:, :5], x)
    for r in range(4):
        f = first[r]
        if f is None:
            assert torch.equal(out[r], greedy[r])
        else:
            assert torch.equal(out[r, :5 + f + 1], greedy[r, :5 + f + 1])  # keeps the stop id
            assert out[r, 5 + f] == choice
            assert (out[r, 5 + f + 1:] == pad).all()

    # every row stops: generation ends right after the last row's stop
    single = model.generate(x[:1], n, temperature=0, stop_ids=[choice, 1000])
    assert single.shape == (1, 5 + first[0] + 1)
    assert torch.equal(single[0], greedy[0, :5 + first[0] + 1])
    # default pad: the smallest stop id; rows that stop later keep going until they do
    both = model.generate(x[:1].expand(2, -1), n, temperature=0, stop_ids=[choice])
    assert both.shape == (2, 5 + first[0] + 1)
    streamed = list(model.stream(x[:1], n, temperature=0, stop_ids=[choice]))
    assert len(streamed) == first[0] + 1 and int(streamed[-1][0]) == choice


def test_stop_default_pad_is_smallest_stop_id():
    model = make_model()
    x = prompt(2, 5)
    greedy = model.generate(x, 10, temperature=0)
    sid = int(greedy[0, 5])  # row 0 stops immediately
    others = set(greedy[1, 5:].tolist())
    if sid in others:
        pytest.fail("seed gives a stop id that row 1 also emits; pick another prompt")
    low = min(set(range(97)) - others - {sid})
    out = model.generate(x, 10, temperature=0, stop_ids=[sid, low])
    if low < sid:
        assert (out[0, 6:] == low).all()
    else:
        assert (out[0, 6:] == sid).all()
    assert torch.equal(out[1], greedy[1])


# streaming, errors, mode -------------------------------------------------------------------------

def test_stream_matches_generate():
    model = make_model(pos_enc="alibi")
    x = prompt(B, 5)
    out = model.generate(x, 40, temperature=0)
    chunks = list(model.stream(x, 40, temperature=0))
    assert len(chunks) == 40 and all(c.shape == (B,) for c in chunks)
    assert torch.equal(torch.stack(chunks, 1), out[:, 5:])
    one = list(model.stream(x[0], 5, temperature=0))
    assert all(c.dim() == 0 for c in one)
    assert torch.equal(torch.stack(one), out[0, 5:10])


@pytest.mark.parametrize("kwargs,needle", [
    (dict(temperature=-0.5), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=0), "top_k"),
    (dict(max_new=-1), "max_new"),
])
def test_bad_arguments(kwargs, needle):
    model = make_model()
    x = prompt(2, 5)
    kw = dict(max_new=3) | kwargs
    with pytest.raises(ValueError, match=needle):
        model.generate(x, **kw)
    with pytest.raises(ValueError, match=needle):
        list(model.stream(x, **kw))


def test_bad_prompts():
    model = make_model()
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        model.generate(torch.tensor([[1, 2, 97]]), 3)
    with pytest.raises(ValueError, match=r"\[0, 97\)"):
        model.generate(torch.tensor([[1, -1, 3]]), 3)
    for empty in (torch.zeros(2, 0, dtype=torch.long), torch.zeros(0, dtype=torch.long), []):
        with pytest.raises(ValueError, match="length"):
            model.generate(empty, 3)
    with pytest.raises(ValueError, match="integer"):
        model.generate(torch.zeros(1, 3), 3)


def test_generate_restores_training_mode():
    model = make_model()
    x = prompt(2, 5)
    model.train()
    model.generate(x, 3)
    assert model.training and all(m.training for m in model.modules())
    list(model.stream(x, 3))
    assert model.training
    with pytest.raises(ValueError):
        model.generate(x, 3, temperature=-1)
    assert model.training
    model.eval()
    model.generate(x, 3)
    assert not model.training


def test_generation_is_eval_mode_with_dropout():
    """Generation runs in eval mode: with dropout on, greedy output is still deterministic and
    equals the eval-mode reference."""
    model = make_model(dropout=0.5)
    model.train()
    x = prompt(2, 5)
    a = model.generate(x, 10, temperature=0)
    model.eval()
    assert torch.equal(a, greedy_reference(model, x, 10))



def test_cache_is_sized_to_what_the_call_can_reach():
    """A short reply from a model with a long max_seq allocates prompt + max_new slots, not
    max_seq; a call that outgrows max_seq gets max_seq (and slides)."""
    model = Transformer(tiny_config(max_seq=32))
    sizes = []
    real = model.make_cache

    def spy(batch, max_len=None, **kw):
        sizes.append(max_len)
        return real(batch, max_len=max_len, **kw)

    model.make_cache = spy
    model.generate(torch.zeros(1, 5, dtype=torch.long), max_new=4, temperature=0)
    model.generate(torch.zeros(1, 5, dtype=torch.long), max_new=60, temperature=0)
    model.generate(torch.zeros(1, 40, dtype=torch.long), max_new=3, temperature=0)  # prompt cropped to 32
    assert sizes == [9, 32, 32]


def _word_tokenizer():
    import random

    from transformer_toolkit import RustBPETokenizer

    rng = random.Random(0)
    words = "def class import return value name data list self".split()
    lines = [" ".join(rng.choice(words) for _ in range(8)) + "\n" for _ in range(300)]
    return RustBPETokenizer().train(lines, vocab_size=300)


def test_heal_trailing_space_drops_the_space_and_allows_only_tokens_that_start_with_it():
    from transformer_toolkit.generation import heal_trailing_space

    tok = _word_tokenizer()
    ids, allowed = heal_trailing_space(tok, "def ")
    assert ids == tok.encode("def")
    assert allowed and all(tok.decode([i], skip_special_tokens=True).startswith(" ") for i in allowed)
    assert tok.encode(" name")[0] in allowed  # the word-with-its-space token the model learned after "def"
    assert not any(i in allowed for i in (tok.bos_id, tok.eos_id, tok.pad_id))  # special tokens never
    rest = [i for i in range(tok.vocab_size) if i not in allowed]
    assert not any(tok.decode([i], skip_special_tokens=True).startswith(" ") for i in rest)
    assert heal_trailing_space(tok, "def name") == (tok.encode("def name"), None)  # nothing to heal
    assert heal_trailing_space(tok, "   ") == (tok.encode("   "), None)  # nothing would be left


def test_complete_keeps_the_prompt_text_and_starts_with_an_allowed_token():
    from transformer_toolkit.generation import complete, heal_trailing_space

    tok = _word_tokenizer()
    torch.manual_seed(0)
    model = Transformer(tiny_config(vocab_size=tok.vocab_size, max_seq=32)).eval()
    text = complete(model, tok, "def ", max_new=6, temperature=0)
    assert text.startswith("def ")
    ids, allowed = heal_trailing_space(tok, "def ")
    with torch.no_grad():
        logits, _ = model(torch.tensor([ids]))
    first = max(allowed, key=lambda i: logits[0, -1, i].item())  # greedy among the allowed ids
    rest = model.generate(torch.tensor(ids + [first]), max_new=5, temperature=0)
    assert text == tok.decode(rest.tolist(), skip_special_tokens=True)
    # without a trailing space it is plain generation
    plain = model.generate(torch.tensor(tok.encode("def name")), max_new=6, temperature=0)
    assert complete(model, tok, "def name", max_new=6, temperature=0) == tok.decode(plain.tolist(),
                                                                                   skip_special_tokens=True)


# prompt cache (a chat's next turn prefills only what is new) ---------------------------------

def _spy_prefills(model) -> list[tuple[int, int]]:
    """Record ``(start_pos, length)`` of every multi-token forward with a cache (the prefills)."""
    seen, real = [], model.forward

    def forward(tokens, cache=None, start_pos=0, **kw):
        if cache is not None and tokens.shape[1] > 1:
            seen.append((int(start_pos), tokens.shape[1]))
        return real(tokens, cache=cache, start_pos=start_pos, **kw)

    model.forward = forward
    return seen


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_prompt_cache_prefills_only_the_new_tokens_and_changes_nothing(attn, pos):
    from transformer_toolkit.generation import PromptCache

    model = make_model(attn=attn, pos_enc=pos)
    pc = PromptCache()
    prefills = _spy_prefills(model)
    x = prompt(1, 5)
    first = model.generate(x, 6, temperature=0, prompt_cache=pc)
    assert prefills == [(0, 5)] and pc.reused == 0
    # the cache holds the prompt and every new token but the last (which was never fed)
    assert torch.equal(pc.ids, first[:, :10])
    turn = torch.cat([first, prompt(1, 4, seed=2)], dim=1)  # the conversation goes on: 15 tokens
    second = model.generate(turn, 8, temperature=0, prompt_cache=pc)
    assert pc.reused == 10 and prefills[1] == (10, 5)
    assert_same_tokens(second, model.generate(turn, 8, temperature=0), f"{attn}/{pos}")
    assert_same_tokens(second, greedy_reference(model, turn, 8), f"{attn}/{pos} reference")


@pytest.mark.parametrize("ffn", ["moe", "moe_shared", "geglu", "ffn"])
def test_prompt_cache_with_every_ffn_kind(ffn):
    from transformer_toolkit.generation import PromptCache

    model = make_model(attn="gqa", ffn=ffn)
    pc = PromptCache()
    first = model.generate(prompt(2, 5), 6, temperature=0, prompt_cache=pc)
    turn = torch.cat([first, prompt(2, 4, seed=2)], dim=1)
    second = model.generate(turn, 8, temperature=0, prompt_cache=pc)
    assert pc.reused == 10
    assert_same_tokens(second, greedy_reference(model, turn, 8), ffn)


def test_prompt_cache_fills_its_cache_in_place_while_it_has_room_then_moves_to_a_larger_one():
    from transformer_toolkit import generation
    from transformer_toolkit.generation import PromptCache

    model = Transformer(tiny_config(attn="gqa", max_seq=512, tie_weights=False, init_std=0.05)).eval()
    sizes, real = [], model.make_cache
    model.make_cache = lambda batch, max_len=None, **kw: sizes.append(max_len) or real(batch, max_len=max_len, **kw)
    pc = PromptCache()
    first = model.generate(prompt(1, 5), 6, temperature=0, prompt_cache=pc)
    assert sizes == [11 + generation.PROMPT_CACHE_ROOM]  # needed + room for later turns
    held = pc.cache
    turn = torch.cat([first, prompt(1, 4, seed=2)], dim=1)
    second = model.generate(turn, 8, temperature=0, prompt_cache=pc)
    assert len(sizes) == 1 and pc.cache is held and pc.reused == 10  # filled in place, nothing copied
    assert_same_tokens(second, greedy_reference(model, turn, 8), "in place")
    long_turn = torch.cat([second, prompt(1, 300, seed=3)], dim=1)  # 323 tokens: more than the room
    third = model.generate(long_turn, 4, temperature=0, prompt_cache=pc)
    assert sizes[1] == 512 and pc.cache is not held and pc.reused == 22  # copied into a larger one (max_seq)
    assert_same_tokens(third, greedy_reference(model, long_turn, 4), "moved")


def test_prompt_cache_reuses_only_the_shared_prefix():
    from transformer_toolkit.generation import PromptCache

    model = make_model(attn="gqa")
    pc = PromptCache()
    x = prompt(2, 12)
    model.generate(x, 3, temperature=0, prompt_cache=pc)
    edited = x.clone()
    edited[1, 7] = (edited[1, 7] + 1) % 97  # one row differs from position 7: both rows refill from there
    got = model.generate(edited, 5, temperature=0, prompt_cache=pc)
    assert pc.reused == 7
    assert_same_tokens(got, greedy_reference(model, edited, 5), "edited prompt")
    again = model.generate(edited, 5, temperature=0, prompt_cache=pc)  # same prompt: all but its last token
    assert pc.reused == 11 and torch.equal(again, got)
    shorter = model.generate(edited[:, :4], 5, temperature=0, prompt_cache=pc)
    assert pc.reused == 3
    model.generate(edited, 0, prompt_cache=pc)  # nothing generated: nothing reused, the cache kept
    assert pc.reused == 0 and len(pc) == 8
    assert_same_tokens(shorter, greedy_reference(model, edited[:, :4], 5), "shorter prompt")


def test_prompt_cache_is_not_used_after_the_weights_or_the_batch_change():
    from transformer_toolkit.generation import PromptCache

    model = make_model(attn="gqa")
    pc = PromptCache()
    x = prompt(1, 8)
    out = model.generate(x, 4, temperature=0, prompt_cache=pc)
    with torch.no_grad():
        model.blocks[0].attn.o_proj.weight.mul_(-1.0)  # an in-place update, as an optimiser step
    got = model.generate(out, 4, temperature=0, prompt_cache=pc)
    assert pc.reused == 0
    assert_same_tokens(got, greedy_reference(model, out, 4), "after a weight update")
    model.load_state_dict(make_model(attn="gqa", init_std=0.07).state_dict())
    got = model.generate(out, 4, temperature=0, prompt_cache=pc)
    assert pc.reused == 0
    assert_same_tokens(got, greedy_reference(model, out, 4), "after load_state_dict")
    model.generate(out.expand(2, -1), 2, temperature=0, prompt_cache=pc)  # another batch size
    assert pc.reused == 0
    model.double()  # another dtype
    model.generate(out.expand(2, -1), 2, temperature=0, prompt_cache=pc)
    assert pc.reused == 0
    pc.clear()
    assert len(pc) == 0 and pc.cache is None


def test_prompt_cache_after_a_stopped_stream_and_a_slid_window():
    from transformer_toolkit.generation import PromptCache

    model = make_model(attn="gqa")
    pc = PromptCache()
    x = prompt(1, 6)
    taken = []
    for tok in model.stream(x, 20, temperature=0, prompt_cache=pc):
        taken.append(int(tok))
        if len(taken) == 3:
            break  # the caller stops reading: the cache still says exactly what it holds
    assert torch.equal(pc.ids[0], torch.cat([x[0], torch.tensor(taken[:2])]))
    turn = torch.cat([x[0], torch.tensor(taken), prompt(1, 3, seed=3)[0]])
    got = model.generate(turn, 6, temperature=0, prompt_cache=pc)
    assert pc.reused == 8
    assert_same_tokens(got[None], greedy_reference(model, turn[None], 6), "after a stopped stream")
    # a reply past max_seq slides the window: the cache then holds a later slice with fresh
    # positions, which a prompt from position 0 does not match
    long = model.generate(turn, 40, temperature=0, prompt_cache=pc)
    assert len(pc) <= MAX_SEQ and not torch.equal(pc.ids[0], long[:len(pc)])
    got = model.generate(long[:20], 4, temperature=0, prompt_cache=pc)
    assert_same_tokens(got[None], greedy_reference(model, long[None, :20], 4), "after a slide")


def test_prompt_cache_is_not_used_by_expert_choice_moe():
    """Expert choice routes a prefill over all its tokens, so a prefill of the new tokens alone
    would route differently than the full prompt: the cache is left unused."""
    from transformer_toolkit.generation import PromptCache

    model = make_model(attn="gqa", ffn="moe_ec")
    pc = PromptCache()
    out = model.generate(prompt(1, 6), 4, temperature=0, prompt_cache=pc)
    turn = torch.cat([out, prompt(1, 3, seed=4)], dim=1)
    got = model.generate(turn, 4, temperature=0, prompt_cache=pc)
    assert pc.reused == 0 and torch.equal(got, model.generate(turn, 4, temperature=0))


def test_a_model_made_under_inference_mode_generates_without_reuse_and_warns():
    """Inference tensors keep no version counter, so an in-place weight update could not be told
    apart from none: decoding then uses neither the cached weight layout nor the prompt cache."""
    from transformer_toolkit.generation import PromptCache
    from transformer_toolkit.model import fast_decode

    torch.manual_seed(0)
    with torch.inference_mode():
        model = make_model(attn="gqa")
        with torch.no_grad():
            ref = greedy_reference(model, prompt(1, 6), 5)
    pc = PromptCache()
    with pytest.warns(UserWarning, match="inference tensors"):
        out = model.generate(prompt(1, 6), 5, temperature=0, prompt_cache=pc)
    assert torch.equal(out, ref) and not fast_decode._PLANS.get(model)  # no layout built
    with torch.inference_mode():
        model.head.weight.mul_(-1.0)  # an update no version counter records
    with pytest.warns(UserWarning, match="inference tensors"):
        out = model.generate(torch.cat([out, prompt(1, 3)], dim=1), 5, temperature=0, prompt_cache=pc)
    assert pc.reused == 0
    with torch.inference_mode():
        assert torch.equal(out, greedy_reference(model, out[:, :14], 5))

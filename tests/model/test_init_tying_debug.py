"""Initialisation (loss ~ ln(vocab)), weight tying and its checkpoints, debug printing,
gradient checkpointing and the MoE auxiliary loss."""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F
from model_helpers import ATTNS, FFNS, NORMS, tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.model import transformer as transformer_mod

V = 1000
LN_V = math.log(V)
DENSE_FFNS = tuple(f for f in FFNS if not f.startswith("moe"))


def init_config(**overrides):
    return tiny_config(**{"vocab_size": V, "dim": 64, "hidden_dim": 128, **overrides})


def random_batch(vocab: int, B: int = 4, T: int = 32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, vocab, (B, T), generator=g)
    y = torch.randint(0, vocab, (B, T), generator=g)  # independent of x: nothing to predict
    return x, y


def ce(model: Transformer, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    logits, _ = model(x)
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def unique_param_count(model: torch.nn.Module) -> int:
    seen = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        seen[p.data_ptr()] = p.numel()
    return sum(seen.values())


def fmt_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}"
    return str(n)


# ── loss at initialisation ─────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("tie", [True, False])
@pytest.mark.parametrize("norm", NORMS)
@pytest.mark.parametrize("attn", ATTNS)
def test_init_loss_close_to_ln_vocab(attn, norm, tie):
    model = Transformer(init_config(attn=attn, norm=norm, tie_weights=tie)).eval()
    x, y = random_batch(V)
    with torch.no_grad():
        loss = ce(model, x, y).item()
    assert abs(loss - LN_V) < 0.15, f"init loss {loss:.3f} vs ln(V) {LN_V:.3f}"


@pytest.mark.parametrize("ffn", ["ffn", "geglu", "moe", "moe_shared", "moe_ec"])
def test_init_loss_close_to_ln_vocab_ffn_kinds(ffn):
    model = Transformer(init_config(ffn=ffn, tie_weights=True)).eval()
    x, y = random_batch(V)
    with torch.no_grad():
        loss = ce(model, x, y).item()
    assert abs(loss - LN_V) < 0.15


@pytest.mark.parametrize("norm", NORMS)
def test_readme_embed_scaling_on_tied_model_is_harmless(norm):
    model = Transformer(init_config(norm=norm, tie_weights=True)).eval()
    with torch.no_grad():
        model.embed.weight.mul_(0.02)  # the README's advice for tied models
    assert model.head.weight is model.embed.weight
    x, y = random_batch(V)
    with torch.no_grad():
        loss = ce(model, x, y).item()
    assert abs(loss - LN_V) < 0.15


def test_init_std_of_embedding_and_head():
    model = Transformer(init_config(tie_weights=False, init_std=0.02))
    assert model.embed.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert model.head.weight.std().item() == pytest.approx(0.02, rel=0.05)


# ── weight tying ───────────────────────────────────────────────────────────────────────────

def test_tied_head_shares_embedding_tensor():
    model = Transformer(tiny_config(tie_weights=True))
    assert model.head.weight is model.embed.weight
    assert model.head.weight.data_ptr() == model.embed.weight.data_ptr()
    names = [n for n, _ in model.named_parameters()]
    assert "embed.weight" in names and "head.weight" not in names


def test_untied_head_is_distinct():
    model = Transformer(tiny_config(tie_weights=False))
    assert model.head.weight is not model.embed.weight
    assert model.head.weight.data_ptr() != model.embed.weight.data_ptr()
    assert not torch.equal(model.head.weight, model.embed.weight)


def test_tied_model_gradients_flow_into_shared_tensor():
    model = Transformer(tiny_config(tie_weights=True))
    x, y = random_batch(97, B=2, T=8)
    ce(model, x, y).backward()
    assert model.embed.weight.grad is not None
    assert model.head.weight.grad is model.embed.weight.grad


@pytest.mark.parametrize("vocab,dim", [(97, 48), (1000, 64), (20000, 64)])
def test_param_counts_tied_vs_untied(vocab, dim):
    torch.manual_seed(0)
    tied = Transformer(tiny_config(vocab_size=vocab, dim=dim, tie_weights=True))
    untied = Transformer(tiny_config(vocab_size=vocab, dim=dim, tie_weights=False))
    n_tied, n_untied = unique_param_count(tied), unique_param_count(untied)
    assert n_untied - n_tied == vocab * dim
    assert tied.num_parameters() == n_tied and untied.num_parameters() == n_untied
    for model, n in ((tied, n_tied), (untied, n_untied)):
        s = model.n_params()
        assert isinstance(s, str)
        assert re.fullmatch(r"\d+(\.\d+)?[KMB]?", s), s
        assert s == fmt_count(n)
        assert model.n_params(exclude_embeddings=True) == fmt_count(n - vocab * dim)
    if vocab == 20000:
        assert tied.n_params().endswith("M") and untied.n_params().endswith("M")
        assert float(untied.n_params()[:-1]) > float(tied.n_params()[:-1])


def test_state_dict_for_save_omits_head_only_when_tied():
    tied = Transformer(tiny_config(tie_weights=True))
    sd = tied.state_dict_for_save()
    assert "head.weight" not in sd and "embed.weight" in sd
    assert set(sd) == set(tied.state_dict()) - {"head.weight"}
    untied = Transformer(tiny_config(tie_weights=False))
    sd_u = untied.state_dict_for_save()
    assert "head.weight" in sd_u
    assert set(sd_u) == set(untied.state_dict())


def _fresh_pair(tie: bool, **overrides):
    torch.manual_seed(1)
    src = Transformer(tiny_config(tie_weights=tie, **overrides)).eval()
    torch.manual_seed(2)
    dst = Transformer(tiny_config(tie_weights=tie, **overrides)).eval()
    x, _ = random_batch(97, B=2, T=10)
    with torch.no_grad():
        want = src(x)[0]
        assert not torch.allclose(dst(x)[0], want)  # different init: the load has to do something
    return src, dst, x, want


def _logits(model, x):
    with torch.no_grad():
        return model(x)[0]


@pytest.mark.parametrize("extra", [{}, {"ffn": "moe"}, {"attn": "mla", "pos_enc": "learned"}])
def test_load_state_dict_with_tie_restores_logits_and_tie(extra):
    src, dst, x, want = _fresh_pair(True, **extra)
    dst.load_state_dict_with_tie(src.state_dict_for_save())
    assert dst.head.weight is dst.embed.weight
    torch.testing.assert_close(_logits(dst, x), want, rtol=0, atol=0)
    # the tie is real after loading: changing the embedding changes the head
    with torch.no_grad():
        dst.embed.weight[0, 0] += 1.0
    assert dst.head.weight[0, 0] == dst.embed.weight[0, 0]


@pytest.mark.parametrize("which", ["state_dict", "state_dict_for_save"])
def test_plain_load_state_dict_strict_keeps_tie(which):
    src, dst, x, want = _fresh_pair(True)
    sd = getattr(src, which)()
    result = dst.load_state_dict(sd, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert dst.head.weight is dst.embed.weight
    torch.testing.assert_close(_logits(dst, x), want, rtol=0, atol=0)
    # loading does not modify the caller's dict, which can be loaded again
    assert ("head.weight" in sd) == (which == "state_dict")
    dst2 = Transformer(tiny_config(tie_weights=True)).eval()
    dst2.load_state_dict(sd)
    assert dst2.head.weight is dst2.embed.weight
    torch.testing.assert_close(_logits(dst2, x), want, rtol=0, atol=0)


def test_load_state_dict_with_tie_accepts_full_state_dict():
    src, dst, x, want = _fresh_pair(True)
    dst.load_state_dict_with_tie(src.state_dict())
    assert dst.head.weight is dst.embed.weight
    torch.testing.assert_close(_logits(dst, x), want, rtol=0, atol=0)


@pytest.mark.parametrize("loader", ["load_state_dict", "load_state_dict_with_tie"])
def test_untied_checkpoint_round_trip(loader):
    src, dst, x, want = _fresh_pair(False)
    sd = src.state_dict_for_save()
    getattr(dst, loader)(sd)
    assert dst.head.weight is not dst.embed.weight
    torch.testing.assert_close(_logits(dst, x), want, rtol=0, atol=0)
    torch.testing.assert_close(dst.head.weight, src.head.weight, rtol=0, atol=0)


def test_untied_checkpoint_missing_head_is_an_error():
    src, dst, _, _ = _fresh_pair(False)
    sd = src.state_dict()
    sd.pop("head.weight")
    with pytest.raises(RuntimeError, match="head.weight"):
        dst.load_state_dict(sd)


@pytest.mark.parametrize("tie", [True, False])
def test_torch_save_and_weights_only_load(tmp_path, tie):
    src, dst, x, want = _fresh_pair(tie)
    path = tmp_path / "ckpt.pt"
    torch.save({"model": src.state_dict_for_save(), "config": src.cfg.to_dict()}, path)
    ckpt = torch.load(path, weights_only=True)
    assert ("head.weight" in ckpt["model"]) == (not tie)
    rebuilt = Transformer(type(src.cfg).from_dict(ckpt["config"])).eval()
    rebuilt.load_state_dict_with_tie(ckpt["model"])
    dst.load_state_dict(ckpt["model"])
    for m in (rebuilt, dst):
        assert (m.head.weight is m.embed.weight) == tie
        torch.testing.assert_close(_logits(m, x), want, rtol=0, atol=0)


# ── debug mode ─────────────────────────────────────────────────────────────────────────────

def test_debug_summary_at_construction(capsys):
    Transformer(init_config(), debug=False)
    assert capsys.readouterr().out == ""
    model = Transformer(init_config(n_layers=2), debug=True)
    out = capsys.readouterr().out
    for needle in ("Model summary", "params", "parameter breakdown", "embed", "blocks"):
        assert needle in out, needle
    assert model.n_params() in out
    assert re.search(r"embed\s+\S+\s+\d+(\.\d+)?[KM]\s+\d+\.\d%", out)


def test_debug_forward_trace_and_entropy(capsys):
    model = Transformer(init_config(n_layers=2), debug=True).eval()
    capsys.readouterr()
    x, _ = random_batch(V, B=2, T=16)
    with torch.no_grad():
        model(x)
    out = capsys.readouterr().out
    for needle in ("Forward pass debug", "block 0", "block 1", "residual update norm ratio", "entropy"):
        assert needle in out, needle
    assert "block 2" not in out
    assert "[2, 16]" in out and f"[2, 16, {V}]" in out
    ratios = [float(r) for r in re.findall(r"residual update norm ratio: ([\d.]+)", out)]
    assert len(ratios) == 2 and all(r > 0 for r in ratios)
    m = re.search(r"\((\d+(?:\.\d+)?)% of uniform\)", out)
    assert m, out
    assert float(m.group(1)) > 90.0
    ent = re.search(r"entropy\s+([\d.]+) / max ([\d.]+)", out)
    assert ent and float(ent.group(2)) == pytest.approx(LN_V, abs=0.01)
    assert 0.9 * LN_V < float(ent.group(1)) <= LN_V + 1e-3


def test_debug_off_prints_nothing(capsys):
    model = Transformer(init_config(), debug=True)
    model.debug = False
    capsys.readouterr()
    x, _ = random_batch(V, B=2, T=8)
    with torch.no_grad():
        model(x)
    assert capsys.readouterr().out == ""


def test_debug_gradients_lists_params_and_flags_nan(capsys):
    model = Transformer(tiny_config())
    x, y = random_batch(97, B=2, T=8)
    ce(model, x, y).backward()
    model.debug_gradients()
    out = capsys.readouterr().out
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        assert n in out, n
    m = re.search(r"total grad norm\s+([\d.e+-]+)", out)
    assert m, out
    want = math.sqrt(sum(p.grad.float().norm().item() ** 2 for p in model.parameters() if p.grad is not None))
    assert float(m.group(1)) == pytest.approx(want, rel=1e-2)
    assert "NaN" not in out

    target = "blocks.0.attn.q_proj.weight"
    dict(model.named_parameters())[target].grad[0, 0] = float("nan")
    model.debug_gradients()
    out = capsys.readouterr().out
    flagged = [line for line in out.splitlines() if "NaN" in line]
    assert len(flagged) == 1 and target in flagged[0]


def test_debug_weights_lists_every_param(capsys):
    model = Transformer(tiny_config(ffn="moe", tie_weights=False))
    model.debug_weights()
    out = capsys.readouterr().out
    names = [n for n, _ in model.named_parameters()]
    assert "head.weight" in names
    for n in names:
        assert re.search(rf"^\s*{re.escape(n)}\s", out, re.M), n


# ── gradient checkpointing ─────────────────────────────────────────────────────────────────

def _loss_and_grads(model, x, y):
    model.zero_grad(set_to_none=True)
    logits, aux = model(x)
    loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1)) + aux
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("overrides", [dict(ffn="swiglu"), dict(ffn="moe", attn="gqa"),
                                       dict(ffn="moe_shared", attn="mla")])
def test_grad_checkpoint_matches_plain_backward(overrides, monkeypatch):
    model = Transformer(tiny_config(dropout=0.0, **overrides)).train()
    x, y = random_batch(97, B=2, T=12)
    calls = []
    orig = transformer_mod.checkpoint

    def spy(*args, **kwargs):
        calls.append(1)
        return orig(*args, **kwargs)

    monkeypatch.setattr(transformer_mod, "checkpoint", spy)
    loss0, g0 = _loss_and_grads(model, x, y)
    assert not calls
    model.grad_checkpoint = True
    runs = []
    hook = model.blocks[0].register_forward_pre_hook(lambda *_: runs.append(1))
    loss1, g1 = _loss_and_grads(model, x, y)
    hook.remove()
    assert len(calls) == model.cfg.n_layers  # every block went through checkpoint
    assert len(runs) == 2  # block 0 recomputed during backward
    torch.testing.assert_close(loss1, loss0)
    assert g1.keys() == g0.keys() and len(g0) == len(list(model.parameters()))
    for n in g0:
        torch.testing.assert_close(g1[n], g0[n], msg=n)


def test_grad_checkpoint_inactive_in_eval_and_no_grad(monkeypatch):
    model = Transformer(tiny_config())
    model.grad_checkpoint = True
    calls = []
    orig = transformer_mod.checkpoint
    monkeypatch.setattr(transformer_mod, "checkpoint", lambda *a, **k: calls.append(1) or orig(*a, **k))
    x, _ = random_batch(97, B=1, T=6)
    model.eval()
    model(x)
    model.train()
    with torch.no_grad():
        model(x)
    assert not calls


# ── MoE auxiliary loss ─────────────────────────────────────────────────────────────────────

@pytest.mark.parametrize("ffn", DENSE_FFNS)
def test_aux_loss_is_exact_zero_for_dense(ffn):
    model = Transformer(tiny_config(ffn=ffn))
    x, _ = random_batch(97, B=2, T=8)
    _, aux = model(x)
    assert isinstance(aux, torch.Tensor) and aux.dim() == 0
    assert aux.item() == 0.0


def test_aux_loss_zero_for_expert_choice():
    # expert choice balances load by construction: no auxiliary loss (moe.ExpertChoiceMoE)
    _, aux = Transformer(tiny_config(ffn="moe_ec"))(random_batch(97, B=2, T=8)[0])
    assert aux.dim() == 0 and aux.item() == 0.0


def _router(model, ffn):
    f = model.blocks[0].ffn
    return f.router.weight if ffn == "moe" else f.routed.router.weight


@pytest.mark.parametrize("ffn", ["moe", "moe_shared"])
def test_aux_loss_positive_and_reaches_router(ffn):
    model = Transformer(tiny_config(ffn=ffn, moe_aux_weight=0.01))
    x, _ = random_batch(97, B=2, T=16)
    _, aux = model(x)
    assert aux.dim() == 0
    assert aux.item() > 0.0
    # near-uniform routing at init: load-balance loss ~1, scaled by moe_aux_weight
    assert aux.item() == pytest.approx(0.01, rel=0.2)
    assert aux.grad_fn is not None
    aux.backward()
    for blk in range(model.cfg.n_layers):
        f = model.blocks[blk].ffn
        w = f.router.weight if ffn == "moe" else f.routed.router.weight
        assert w.grad is not None and w.grad.abs().sum().item() > 0, blk
    assert _router(model, ffn).grad.abs().sum().item() > 0


@pytest.mark.parametrize("ffn", ["moe", "moe_shared"])
def test_aux_loss_scales_with_weight(ffn):
    x, _ = random_batch(97, B=2, T=16)
    auxes = []
    for w in (0.01, 0.03):
        torch.manual_seed(5)
        with torch.no_grad():
            auxes.append(Transformer(tiny_config(ffn=ffn, moe_aux_weight=w))(x)[1].item())
    assert auxes[1] == pytest.approx(3 * auxes[0], rel=1e-5)

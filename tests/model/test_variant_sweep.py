"""One base config, every variant: ``attn`` x ``ffn`` x ``pos_enc`` x ``norm`` (450 combinations)
each built from the same ``BASE``, which sets every variant-specific field. Each combination warns
once, naming exactly the fields its variants ignore (an expectation written here by hand, not read
from the table it checks), records what it uses, round-trips silently, trains one optimizer step
and decodes exactly: cached greedy generation equals the argmax of the full forward at every step
(for ``moe_ec``, not causal, at the first step only: the step that follows a prefill)."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from model_helpers import ATTNS, FFNS, NORMS, POS

from transformer_toolkit import Transformer
from transformer_toolkit.model import TransformerConfig
from transformer_toolkit.model.variant_fields import VARIANT_FIELDS, IgnoredFieldWarning

BASE = dict(
    vocab_size=64, dim=32, n_layers=1, n_heads=4, max_seq=16, hidden_dim=48, tie_weights=False, init_std=0.05,
    n_kv_heads=2, qkv_bias=True, latent_dim=8, q_latent_dim=16, rope_head_dim=4, rope_theta=5e5,
    gelu="exact", n_experts=4, top_k=3, moe_hidden_dim=24, moe_aux_weight=0.02, moe_norm_topk=False,
    moe_capacity=1.5, moe_n_shared=1, moe_n_routed=3,
)
DEFAULT = {name: f.default for name, f in TransformerConfig.model_fields.items()}
MOE_FIELDS = {"n_experts", "top_k", "moe_hidden_dim", "moe_aux_weight", "moe_norm_topk", "moe_capacity",
              "moe_n_shared", "moe_n_routed"}


def expected_ignored(attn: str, ffn: str, pos: str) -> set[str]:
    """The base fields each variant does not read, written out from what the modules compute."""
    mla = {"latent_dim", "q_latent_dim", "rope_head_dim"}
    out = {"mha": {"n_kv_heads"} | mla, "mqa": {"n_kv_heads"} | mla, "gqa": mla, "flash": mla,
           "mla": {"n_kv_heads", "qkv_bias"}}[attn]
    if pos != "rope":
        out = out | {"rope_theta", "rope_head_dim"}
    out = out | ({"gelu"} if ffn not in ("ffn", "geglu") else set())
    return out | {"ffn": MOE_FIELDS, "relu_ffn": MOE_FIELDS, "glu": MOE_FIELDS, "reglu": MOE_FIELDS,
                  "geglu": MOE_FIELDS, "swiglu": MOE_FIELDS,
                  "moe": {"moe_capacity", "moe_n_shared", "moe_n_routed"},
                  "moe_ec": {"moe_aux_weight", "moe_norm_topk", "moe_n_shared", "moe_n_routed"},
                  "moe_shared": {"moe_capacity"}}[ffn]


def recorded_value(name: str, attn: str) -> object:
    """What the config records for an ignored base field."""
    if name == "n_kv_heads":
        return 1 if attn == "mqa" else BASE["n_heads"]
    if name == "rope_head_dim" and attn == "mla":
        return 0  # mla without rope has no rope part
    return DEFAULT[name]


def test_base_sets_every_variant_field():
    assert {f.name for f in VARIANT_FIELDS} <= set(BASE)
    assert all(BASE[f.name] != DEFAULT[f.name] for f in VARIANT_FIELDS)  # so an ignored one always shows


def build(attn: str, ffn: str, pos: str, norm: str) -> tuple[TransformerConfig, list[str]]:
    with warnings.catch_warnings(record=True) as rec:
        warnings.simplefilter("always")
        cfg = TransformerConfig(**BASE, attn=attn, ffn=ffn, pos_enc=pos, norm=norm)
    return cfg, [str(w.message) for w in rec if issubclass(w.category, IgnoredFieldWarning)]


def check_config(cfg: TransformerConfig, messages: list[str], attn: str, ffn: str, pos: str) -> None:
    ignored = expected_ignored(attn, ffn, pos)
    assert len(messages) == 1, messages  # every combination ignores something of BASE, in one warning
    named = {f.name for f in VARIANT_FIELDS if f"{f.name}={BASE[f.name]!r} is ignored" in messages[0]}
    assert named == ignored, messages[0]
    for f in VARIANT_FIELDS:
        want = recorded_value(f.name, attn) if f.name in ignored else BASE[f.name]
        assert getattr(cfg, f.name) == want, f.name
    with warnings.catch_warnings():
        warnings.simplefilter("error", IgnoredFieldWarning)  # what a config records reloads silently
        assert TransformerConfig.from_dict(cfg.to_dict()) == cfg


@pytest.fixture(autouse=True)
def _one_thread():
    """Ops this small gain nothing from a second thread, and on a busy machine two threads wait
    on each other (10x slower here)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


COMBOS = [(a, f, p, n) for a in ATTNS for f in FFNS for p in POS for n in NORMS]


@pytest.mark.parametrize("attn,ffn,pos,norm", COMBOS)
def test_every_combination_builds_warns_once_and_runs(attn, ffn, pos, norm):
    cfg, messages = build(attn, ffn, pos, norm)
    check_config(cfg, messages, attn, ffn, pos)
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (2, 12))
    with torch.no_grad():
        logits, aux = model(x)
    assert logits.shape == (2, 12, cfg.vocab_size) and torch.isfinite(logits).all()
    assert aux.dim() == 0 and torch.isfinite(aux)


def loss_of(model: Transformer, x: torch.Tensor) -> torch.Tensor:
    logits, aux = model(x[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), x[:, 1:].reshape(-1)) + aux


@torch.no_grad()
def assert_exact_decode(model: Transformer, prompt: torch.Tensor, max_new: int, what: str) -> None:
    """Cached greedy generation == the argmax of one full, uncached forward over the generated
    sequence (within max_seq, so no window slides): the model is causal, so position t of that
    forward is the forward of the first t + 1 tokens. moe_ec is not causal: its first step only."""
    got = model.generate(prompt, max_new, temperature=0)
    P = prompt.shape[1]
    end = P + 1 if model.cfg.ffn == "moe_ec" else P + max_new
    logits, _ = model(got[:, :end - 1])
    want = logits[:, P - 1:].argmax(-1)
    assert torch.equal(got[:, P:end], want), f"{what}: cached {got[:, P:end].tolist()} != full {want.tolist()}"


@pytest.mark.parametrize("attn,ffn,pos,norm", COMBOS)
def test_every_combination_trains_a_step_and_decodes_exactly(attn, ffn, pos, norm):
    torch.manual_seed(0)
    cfg, _ = build(attn, ffn, pos, norm)
    model = Transformer(cfg)
    x = torch.randint(0, cfg.vocab_size, (4, 13))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    loss = loss_of(model, x)
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    before = [p.detach().clone() for p in model.parameters()]
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
    with torch.no_grad():
        assert loss_of(model, x) < loss  # one step on the batch lowers its loss
        model.head.weight.mul_(20)  # spread the logits, so greedy argmax is far from ties
    model.eval()
    assert_exact_decode(model, x[:2, :4], 12, f"{attn}/{ffn}/{pos}/{norm}")

"""MoE layers against naive per-token references: outputs, gradients, aux loss, dispatch."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from model_helpers import tiny_config

from transformer_toolkit import Transformer
from transformer_toolkit.model import kernels
from transformer_toolkit.model.kernels import grouped_mm
from transformer_toolkit.model.moe import (
    ExpertChoiceMoE,
    Experts,
    SharedExpertMoE,
    TokenChoiceMoE,
    dispatch_topk,
    load_balance_loss,
)

D, H, E = 16, 32, 4  # multiples of 4 floats: torch._grouped_mm's CPU stride requirement


@pytest.fixture(autouse=True)
def _fresh_grouped_mm_state(monkeypatch):
    """Each test starts with no remembered grouped-mm failure (and leaves none behind)."""
    monkeypatch.setattr(kernels, "_GROUPED_MM_OK", {})


def init_experts(experts: Experts, std: float = 0.3) -> Experts:
    with torch.no_grad():
        for p in (experts.gate_proj, experts.up_proj, experts.down_proj):
            p.normal_(0.0, std)
    return experts


def expert_ref(gate, up, down, e: int, x: torch.Tensor) -> torch.Tensor:
    """One SwiGLU expert on one token: down[e] @ (silu(gate[e] @ x) * (up[e] @ x))."""
    return down[e] @ (F.silu(gate[e] @ x) * (up[e] @ x))


def topk_ref(x, router_w, gate, up, down, k: int, normalize: bool) -> torch.Tensor:
    """Token-choice MoE, token by token, looping over experts."""
    probs = (x @ router_w.T).softmax(-1)
    rows = []
    for n in range(x.shape[0]):
        w, idx = probs[n].topk(k)
        if normalize:
            w = w / w.sum()
        acc = torch.zeros(x.shape[1])
        for e in range(gate.shape[0]):
            for slot in range(k):
                if int(idx[slot]) == e:
                    acc = acc + w[slot] * expert_ref(gate, up, down, e, x[n])
        rows.append(acc)
    return torch.stack(rows)


def leaf_copies(*tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


# token choice ---------------------------------------------------------------------------------

@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("k", [1, 2, 3])
def test_token_choice_matches_naive_reference_and_gradients(normalize, k):
    layer = TokenChoiceMoE(D, H, E, top_k=k, aux_weight=0.0, normalize=normalize)
    init_experts(layer.experts)
    x = torch.randn(2, 7, D, requires_grad=True)
    out, aux = layer(x)
    assert out.shape == x.shape and aux.item() == 0.0

    xr, wr, g, u, d = leaf_copies(x.reshape(-1, D), layer.router.weight, layer.experts.gate_proj,
                                  layer.experts.up_proj, layer.experts.down_proj)
    ref = topk_ref(xr, wr, g, u, d, k, normalize)
    torch.testing.assert_close(out.reshape(-1, D), ref, atol=1e-5, rtol=1e-5)

    upstream = torch.randn_like(ref)
    (out.reshape(-1, D) * upstream).sum().backward()
    (ref * upstream).sum().backward()
    for got, want in [(x.grad.reshape(-1, D), xr.grad), (layer.router.weight.grad, wr.grad),
                      (layer.experts.gate_proj.grad, g.grad), (layer.experts.up_proj.grad, u.grad),
                      (layer.experts.down_proj.grad, d.grad)]:
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)
    if k < E or not normalize:  # with normalised weights over all experts the router gets no signal
        assert layer.router.weight.grad.abs().sum() > 0


def test_dispatch_topk_counts_and_output():
    experts = init_experts(Experts(E, D, H))
    x = torch.randn(11, D)
    probs = torch.randn(11, E).softmax(-1)
    out, counts = dispatch_topk(x, probs, 2, True, experts)
    idx = probs.topk(2, -1).indices
    assert torch.equal(counts, torch.bincount(idx.reshape(-1), minlength=E))
    assert counts.sum() == 22
    # reference with the given probabilities
    ref = torch.zeros(11, D)
    for n in range(11):
        w, ids = probs[n].topk(2)
        w = w / w.sum()
        for e in range(E):
            for s in range(2):
                if int(ids[s]) == e:
                    ref[n] += w[s] * expert_ref(experts.gate_proj, experts.up_proj, experts.down_proj, e, x[n])
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)


def test_dispatch_with_idle_experts():
    """Experts that receive no token (empty groups) are fine and get zero gradient."""
    experts = init_experts(Experts(E, D, H))
    x = torch.randn(6, D)
    probs = torch.full((6, E), 0.01)
    probs[:, 1], probs[:, 3] = 0.6, 0.38  # every token picks experts 1 and 3
    out, counts = dispatch_topk(x, probs, 2, False, experts)
    assert counts.tolist() == [0, 6, 0, 6]
    ref = torch.stack([0.6 * expert_ref(experts.gate_proj, experts.up_proj, experts.down_proj, 1, x[n])
                       + 0.38 * expert_ref(experts.gate_proj, experts.up_proj, experts.down_proj, 3, x[n])
                       for n in range(6)])
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)
    out.sum().backward()
    g = experts.gate_proj.grad
    assert g[0].abs().sum() == 0 and g[2].abs().sum() == 0
    assert g[1].abs().sum() > 0 and g[3].abs().sum() > 0


def test_token_choice_aux_loss():
    layer = TokenChoiceMoE(D, H, E, top_k=2, aux_weight=0.25)
    init_experts(layer.experts)
    x = torch.randn(3, 5, D)
    _, aux = layer(x)
    probs = (x.reshape(-1, D) @ layer.router.weight.T).softmax(-1)
    counts = torch.bincount(probs.topk(2, -1).indices.reshape(-1), minlength=E).float()
    want = 0.25 * E * ((counts / (15 * 2)) * probs.mean(0)).sum()
    torch.testing.assert_close(aux, want.detach())
    aux.backward()  # the aux loss trains the router
    assert layer.router.weight.grad.abs().sum() > 0


# load balance loss ---------------------------------------------------------------------------

def test_load_balance_loss_hand_computed():
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    experts = init_experts(Experts(3, D, H))
    _, counts = dispatch_topk(torch.randn(2, D), probs, 2, True, experts)
    # top-2: token 0 -> {0, 1}, token 1 -> {1, 2}: every assignment counts, not only the first
    assert counts.tolist() == [1, 2, 1]
    # f = [1/4, 2/4, 1/4], P = [0.3, 0.45, 0.25]: 3 * (0.075 + 0.225 + 0.0625)
    loss = load_balance_loss(probs, counts, 2)
    assert loss.item() == pytest.approx(1.0875, abs=1e-6)


def test_load_balance_loss_uniform_is_one():
    for n, e, k in [(4, 4, 2), (8, 4, 1), (6, 3, 3)]:
        probs = torch.full((n, e), 1.0 / e)
        counts = torch.full((e,), n * k // e)
        assert load_balance_loss(probs, counts, k).item() == pytest.approx(1.0, abs=1e-6)
    # collapsed routing is penalised
    probs = torch.tensor([[1.0, 0.0, 0.0, 0.0]] * 4)
    assert load_balance_loss(probs, torch.tensor([4, 0, 0, 0]), 1).item() == pytest.approx(4.0)


# grouped matmul ------------------------------------------------------------------------------

def _grouped_ref(x, w, sizes):
    out, s = [], 0
    for e, n in enumerate(sizes):
        out.append(x[s:s + n] @ w[e])
        s += n
    return torch.cat(out)


@pytest.mark.parametrize("sizes", [[3, 0, 2, 0, 4], [0, 0, 5], [5, 0, 0], [1, 1, 1, 1, 1]])
def test_grouped_mm_matches_per_slice(sizes):
    x = torch.randn(sum(sizes), 16)
    w = torch.randn(len(sizes), 16, 8)
    offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
    torch.testing.assert_close(grouped_mm(x, w, offs), _grouped_ref(x, w, sizes))
    # weights stored (out, in) and transposed, as Experts does
    wt = torch.randn(len(sizes), 8, 16)
    torch.testing.assert_close(grouped_mm(x, wt.transpose(1, 2), offs), _grouped_ref(x, wt.transpose(1, 2), sizes))


def test_grouped_mm_fallback(monkeypatch):
    calls = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("no grouped mm here")

    monkeypatch.setattr(torch, "_grouped_mm", broken)
    sizes = [3, 0, 2, 0, 4]
    x = torch.randn(9, 16, requires_grad=True)
    w = torch.randn(5, 16, 8, requires_grad=True)
    offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
    got = grouped_mm(x, w, offs)
    torch.testing.assert_close(got, _grouped_ref(x, w, sizes))
    assert kernels._GROUPED_MM_OK.get(("cpu", torch.float32, 16, 8)) is False
    grouped_mm(x, w, offs)
    assert len(calls) == 1  # the failure is remembered
    got.sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad[1].abs().sum() == 0 and w.grad[0].abs().sum() > 0

    # a whole layer on the fallback equals the naive reference
    layer = TokenChoiceMoE(D, H, E, top_k=2, aux_weight=0.0)
    init_experts(layer.experts)
    xs = torch.randn(9, D)
    out, _ = layer(xs[None])
    ref = topk_ref(xs, layer.router.weight, layer.experts.gate_proj, layer.experts.up_proj,
                   layer.experts.down_proj, 2, True)
    torch.testing.assert_close(out[0], ref.detach(), atol=1e-5, rtol=1e-5)


def test_grouped_mm_unaligned_shapes():
    """Widths that torch._grouped_mm rejects on CPU (rows not 16-byte aligned) still work."""
    sizes = [2, 0, 3]
    x = torch.randn(5, 6)
    w = torch.randn(3, 6, 5)
    offs = torch.tensor(sizes).cumsum(0).to(torch.int32)
    torch.testing.assert_close(grouped_mm(x, w, offs), _grouped_ref(x, w, sizes))


def test_unaligned_call_does_not_disable_grouped_mm_for_aligned_shapes(monkeypatch):
    """The fused path is documented for every device/dtype that supports it. One call whose
    shapes torch._grouped_mm rejects (a stride/alignment error, not a dtype/device limit) must
    not switch every later, aligned call in the process to the host-syncing fallback."""
    grouped_mm(torch.randn(5, 6), torch.randn(3, 6, 5), torch.tensor([2, 2, 5], dtype=torch.int32))
    real, n = torch._grouped_mm, []

    def counting(*args, **kwargs):
        n.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "_grouped_mm", counting)
    grouped_mm(torch.randn(9, 16), torch.randn(3, 16, 8), torch.tensor([3, 3, 9], dtype=torch.int32))
    assert len(n) == 1, "an aligned grouped_mm call no longer uses torch._grouped_mm"


# shared experts ------------------------------------------------------------------------------

def test_shared_expert_moe_is_shared_plus_routed():
    layer = SharedExpertMoE(D, H, n_shared=2, n_routed=3, top_k=2, aux_weight=0.0)
    init_experts(layer.routed.experts)
    assert layer.shared.gate_proj.out_features == 2 * H
    x = torch.randn(2, 6, D)
    out, _ = layer(x)
    xf = x.reshape(-1, D)
    s = layer.shared
    shared = s.down_proj(F.silu(s.gate_proj(xf)) * s.up_proj(xf))
    r = layer.routed
    routed = topk_ref(xf, r.router.weight, r.experts.gate_proj, r.experts.up_proj, r.experts.down_proj, 2, True)
    torch.testing.assert_close(out.reshape(-1, D), (shared + routed).detach(), atol=1e-5, rtol=1e-5)
    assert (shared.abs().sum() > 0) and (routed.abs().sum() > 0)

    none = SharedExpertMoE(D, H, n_shared=0, n_routed=3, top_k=2, aux_weight=0.0)
    none.routed.load_state_dict(layer.routed.state_dict())
    torch.testing.assert_close(none(x)[0].reshape(-1, D), routed.detach(), atol=1e-5, rtol=1e-5)


# expert choice -------------------------------------------------------------------------------

def ec_ref(layer: ExpertChoiceMoE, x: torch.Tensor):
    """Expert choice per sequence: every expert takes its C highest-scoring tokens."""
    B, T, _ = x.shape
    Ex = layer.router.out_features
    C = max(1, min(T, math.ceil(layer.capacity * T / Ex)))
    ex = layer.experts
    probs = (x @ layer.router.weight.T).softmax(-1)  # (B, T, E)
    out = torch.zeros_like(x)
    chosen = {}
    for b in range(B):
        for e in range(Ex):
            toks = probs[b, :, e].topk(C).indices
            chosen[b, e] = sorted(toks.tolist())
            for t in toks.tolist():
                out[b, t] += probs[b, t, e] * expert_ref(ex.gate_proj, ex.up_proj, ex.down_proj, e, x[b, t])
    return out, C, chosen


@pytest.mark.parametrize("capacity,T", [(1.0, 10), (1.5, 10), (2.0, 7), (0.1, 9), (8.0, 6)])
def test_expert_choice_matches_reference(capacity, T, monkeypatch):
    layer = ExpertChoiceMoE(D, H, E, capacity=capacity, top_k=2)
    init_experts(layer.experts)
    x = torch.randn(3, T, D)

    seen = []
    real = layer.experts.batched

    def spy(xs):
        seen.append(xs.detach().clone())
        return real(xs)

    monkeypatch.setattr(layer.experts, "batched", spy)
    out, aux = layer(x)
    ref, C, chosen = ec_ref(layer, x)
    assert C == max(1, min(T, math.ceil(capacity * T / E)))
    torch.testing.assert_close(out, ref.detach(), atol=1e-5, rtol=1e-5)
    assert aux.item() == 0.0

    # each expert processed exactly C tokens of each sequence: the ones the reference picked
    (xs,) = seen
    assert xs.shape == (E, 3 * C, D)
    for e in range(E):
        for b in range(3):
            rows = xs[e, b * C:(b + 1) * C]
            picked = [int((x[b] - r).abs().sum(-1).argmin()) for r in rows]
            assert sorted(picked) == chosen[b, e]


def test_expert_choice_continuing_is_token_choice():
    layer = ExpertChoiceMoE(D, H, E, capacity=1.0, top_k=2)
    init_experts(layer.experts)
    x = torch.randn(3, 1, D)
    out, aux = layer(x, continuing=True)
    ex = layer.experts
    ref = topk_ref(x.reshape(-1, D), layer.router.weight, ex.gate_proj, ex.up_proj, ex.down_proj, 2, True)
    torch.testing.assert_close(out.reshape(-1, D), ref.detach(), atol=1e-5, rtol=1e-5)
    # a multi-token continuing chunk is routed token by token as well
    x4 = torch.randn(2, 4, D)
    out4, _ = layer(x4, continuing=True)
    ref4 = topk_ref(x4.reshape(-1, D), layer.router.weight, ex.gate_proj, ex.up_proj, ex.down_proj, 2, True)
    torch.testing.assert_close(out4.reshape(-1, D), ref4.detach(), atol=1e-5, rtol=1e-5)
    # and differs from expert choice over the same chunk
    assert not torch.allclose(layer(x4)[0], out4, atol=1e-4)


# mixed precision -----------------------------------------------------------------------------

@pytest.mark.parametrize("ffn", ["moe", "moe_shared", "moe_ec"])
def test_bf16_autocast_forward_backward(ffn):
    model = Transformer(tiny_config(ffn=ffn, init_std=0.1))
    x = torch.randint(0, 97, (2, 16))
    ref, _ = model(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, aux = model(x)
        loss = F.cross_entropy(logits.float().reshape(-1, 97), x.reshape(-1)) + aux
    assert logits.dtype == torch.bfloat16
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    err = (logits.float() - ref).abs().max().item()
    assert err < 0.05 * ref.abs().max().item() + 0.02, err


# no host sync -------------------------------------------------------------------------------

@pytest.fixture
def sync_spy(monkeypatch):
    counts = {"_grouped_mm": 0, "tolist": 0, "item": 0, "__bool__": 0, "__int__": 0, "nonzero": 0}
    real_gmm = torch._grouped_mm

    def gmm(*args, **kwargs):
        counts["_grouped_mm"] += 1
        return real_gmm(*args, **kwargs)

    monkeypatch.setattr(torch, "_grouped_mm", gmm)
    for name in ("tolist", "item", "__bool__", "__int__", "nonzero"):
        real = getattr(torch.Tensor, name)

        def wrapper(self, *args, _real=real, _name=name, **kwargs):
            counts[_name] += 1
            return _real(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, wrapper)
    return counts


def test_token_choice_forward_has_no_host_sync(sync_spy):
    layer = TokenChoiceMoE(48, 64, E, top_k=2, aux_weight=0.01)
    init_experts(layer.experts)
    x = torch.randn(2, 9, 48)
    layer(x)
    assert sync_spy["_grouped_mm"] == 3  # gate, up, down
    syncs = {k: v for k, v in sync_spy.items() if k != "_grouped_mm"}
    assert syncs == dict.fromkeys(syncs, 0), syncs


def test_moe_model_forward_has_no_host_sync(sync_spy):
    for ffn in ("moe", "moe_shared"):
        model = Transformer(tiny_config(ffn=ffn))
        before = sync_spy["_grouped_mm"]
        model(torch.randint(0, 97, (2, 12)))
        assert sync_spy["_grouped_mm"] - before == 3 * model.cfg.n_layers
    assert sync_spy["tolist"] == sync_spy["item"] == sync_spy["nonzero"] == 0


@pytest.mark.parametrize(("capability", "dtype", "native"), [
    ((9, 0), torch.bfloat16, True), ((10, 0), torch.bfloat16, True), ((9, 0), torch.float32, False),
    ((8, 0), torch.bfloat16, False), ((12, 0), torch.bfloat16, False), ((8, 6), torch.float16, False)])
def test_grouped_mm_kernel_only_where_it_needs_no_host_sync(monkeypatch, capability, dtype, native):
    from transformer_toolkit.model.kernels import native_grouped_mm

    # on CUDA, torch._grouped_mm's own kernel is bf16 on Hopper/Blackwell; elsewhere it falls back to
    # a loop that copies the offsets to the host, which a CUDA-graph capture cannot hold
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
    assert native_grouped_mm(torch.device("cuda"), dtype) is native
    assert native_grouped_mm(torch.device("cpu"), dtype)

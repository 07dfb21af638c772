"""GPU correctness: every test here needs CUDA and is skipped without it.

CI machines have no GPU; run these on one with ``python -m pytest tests/gpu``. What they check:
cached decoding (eager and CUDA-graph) equals the full forward in every attention x position
variant; bf16 autocast training of every attention / FFN kind learns; ``attn="flash"`` runs the
FlashAttention kernel itself; MoE's grouped GEMM equals a per-expert loop; ``compile=True``
trains like eager; a Trainer run on the GPU resumes exactly.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from model_helpers import ATTN_X_POS, tiny_config

from transformer_toolkit import generation
from transformer_toolkit.model import Transformer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEV = "cuda"


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
def test_cached_decode_equals_full_forward_on_gpu(attn, pos):
    torch.manual_seed(0)
    model = Transformer(tiny_config(attn=attn, pos_enc=pos)).to(DEV).eval()
    tokens = torch.randint(0, 97, (2, 12), device=DEV)
    with torch.no_grad():
        full, _ = model(tokens)
        cache = model.make_cache(2)
        model(tokens[:, :4], cache=cache, start_pos=0)
        steps = [model(tokens[:, t:t + 1], cache=cache, start_pos=torch.tensor([t], device=DEV))[0][:, 0]
                 for t in range(4, 12)]
    torch.testing.assert_close(torch.stack(steps, 1), full[:, 4:], atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("attn,pos", ATTN_X_POS)
@pytest.mark.parametrize("ffn", ["swiglu", "moe"])
def test_cuda_graph_generation_equals_eager(attn, pos, ffn, monkeypatch):
    torch.manual_seed(0)
    model = Transformer(tiny_config(attn=attn, pos_enc=pos, ffn=ffn, max_seq=32)).to(DEV)
    prompt = torch.randint(0, 97, (3, 5), device=DEV)
    captured = []
    real_create = generation.GraphStep.create.__func__

    def spy(cls, *a, **k):
        g = real_create(cls, *a, **k)
        captured.append(g)
        return g

    monkeypatch.setattr(generation.GraphStep, "create", classmethod(spy))
    monkeypatch.setattr(generation, "CUDA_GRAPHS", True)
    with_graph = model.generate(prompt, max_new=40, temperature=0)  # 40 > max_seq - 5: slides the window
    assert captured and captured[0] is not None, "the decode step was not captured in a CUDA graph"
    monkeypatch.setattr(generation, "CUDA_GRAPHS", False)
    eager = model.generate(prompt, max_new=40, temperature=0)
    assert torch.equal(with_graph, eager)


@pytest.mark.parametrize("attn", ["gqa", "mla"])
def test_compiled_generation_equals_eager_on_gpu(attn):
    """generate(compile=True) on CUDA: torch.compile(mode="reduce-overhead") of the decode step."""
    from torch._dynamo.utils import counters

    torch.manual_seed(0)
    model = Transformer(tiny_config(attn=attn, max_seq=32)).to(DEV)
    prompt = torch.randint(0, 97, (2, 5), device=DEV)
    skips = counters["inductor"]["cudagraph_skips"]
    compiled = model.generate(prompt, max_new=40, temperature=0, compile=True)
    assert torch.equal(compiled, model.generate(prompt, max_new=40, temperature=0))
    # the step ran as a CUDA graph: inductor skips graphs when a step writes an input whose
    # address is not static (the KV cache buffers, unless marked)
    assert counters["inductor"]["cudagraph_skips"] == skips


def test_a_list_or_cpu_prompt_is_moved_to_the_model():
    torch.manual_seed(0)
    model = Transformer(tiny_config()).to(DEV)
    on_gpu = model.generate(torch.tensor([[1, 2, 3]], device=DEV), max_new=5, temperature=0)
    for prompt in ([[1, 2, 3]], torch.tensor([[1, 2, 3]])):
        out = model.generate(prompt, max_new=5, temperature=0)
        assert out.device.type == "cuda" and torch.equal(out, on_gpu)


@pytest.mark.parametrize("mode", ["eager", "cuda_graph", "compile"])
def test_prompt_cache_on_gpu(mode, monkeypatch):
    """A second turn that reuses the first turn's cache gives the tokens of a fresh call, with the
    eager step, a captured CUDA graph (the prefix copied in after capture) and a compiled step."""
    torch.manual_seed(0)
    model = Transformer(tiny_config(attn="gqa", max_seq=64)).to(DEV)
    monkeypatch.setattr(generation, "CUDA_GRAPHS", mode == "cuda_graph")
    pc = generation.PromptCache()
    compile = mode == "compile"
    first = model.generate(torch.randint(0, 97, (1, 5), device=DEV), 6, temperature=0, compile=compile,
                           prompt_cache=pc)
    turn = torch.cat([first, torch.randint(0, 97, (1, 4), device=DEV)], dim=1)
    second = model.generate(turn, 8, temperature=0, compile=compile, prompt_cache=pc)
    assert pc.reused == 10
    monkeypatch.setattr(generation, "CUDA_GRAPHS", False)
    assert torch.equal(second, model.generate(turn, 8, temperature=0))


@pytest.mark.parametrize("attn", ["mha", "gqa", "mqa", "flash", "mla"])
@pytest.mark.parametrize("ffn", ["swiglu", "ffn", "moe", "moe_ec", "moe_shared"])
def test_bf16_autocast_training_learns_on_gpu(attn, ffn):
    torch.manual_seed(0)
    model = Transformer(tiny_config(attn=attn, ffn=ffn, vocab_size=64)).to(DEV)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, fused=True)
    x = torch.randint(0, 64, (8, 32), device=DEV)
    losses = []
    for _ in range(40):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            logits, aux = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten()) + aux
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, map(torch.tensor, losses)))
    assert losses[-1] < 0.5 * losses[0], f"{attn}/{ffn}: loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_flash_attention_uses_the_flash_kernel_in_bf16(monkeypatch):
    from torch.nn.attention import SDPBackend

    from transformer_toolkit.model import kernels

    # attn="flash" opens its own sdpa_kernel(kernels.FUSED) (flash, then efficient), which replaces
    # any outer choice: narrow it to flash alone, so a refusal of the flash kernel raises
    monkeypatch.setattr(kernels, "FUSED", [SDPBackend.FLASH_ATTENTION])
    model = Transformer(tiny_config(attn="flash", dim=128, n_heads=2)).to(DEV, torch.bfloat16)
    x = torch.randint(0, 97, (2, 32), device=DEV)
    logits, _ = model(x)
    logits.float().sum().backward()
    ref = Transformer(tiny_config(attn="mha", dim=128, n_heads=2)).to(DEV)
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(model(x)[0].float(), ref(x)[0], atol=5e-2, rtol=5e-2)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_moe_grouped_gemm_equals_per_expert_loop(dtype):
    from transformer_toolkit.model.moe import Experts

    torch.manual_seed(0)
    model = Transformer(tiny_config(ffn="moe", n_experts=8, top_k=2, dim=64, hidden_dim=128)).to(DEV, dtype)
    moe = model.blocks[0].ffn
    x = torch.randn(4, 16, 64, device=DEV, dtype=dtype)
    y, _ = moe(x)
    experts = next(m for m in moe.modules() if isinstance(m, Experts))
    # reference: the same routing, then each token through its experts one by one in fp32
    flat = x.reshape(-1, 64).float()
    ref = torch.zeros_like(flat)
    weights, idx = moe.router(x.reshape(-1, 64)).float().softmax(dim=-1).topk(2, dim=-1)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    for t in range(flat.shape[0]):
        for w, e in zip(weights[t].float(), idx[t], strict=True):
            g = experts.gate_proj[e].float() @ flat[t]  # weights are (out, in) like nn.Linear
            u = experts.up_proj[e].float() @ flat[t]
            ref[t] += w * (experts.down_proj[e].float() @ (torch.nn.functional.silu(g) * u))
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-4
    torch.testing.assert_close(y.reshape(-1, 64).float(), ref, atol=tol, rtol=tol)


def test_compiled_training_matches_eager():
    torch.manual_seed(0)
    eager = Transformer(tiny_config(vocab_size=64)).to(DEV)
    compiled = Transformer(tiny_config(vocab_size=64)).to(DEV)
    compiled.load_state_dict(eager.state_dict())
    fn = torch.compile(compiled)
    x = torch.randint(0, 64, (4, 32), device=DEV)
    for m in (eager, fn):
        logits, _ = m(x[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten()).backward()
    for (n, a), b in zip(eager.named_parameters(), compiled.parameters(), strict=True):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-3, msg=n)


def test_trainer_bf16_run_on_gpu_resumes_exactly(tmp_path, monkeypatch):
    # tests/trainer is on sys.path only once pytest has collected a test there; `pytest tests/gpu` does not
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "trainer"))
    from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model

    from transformer_toolkit.trainer import Trainer

    def run(steps, resume=None, folder="a"):
        torch.manual_seed(0)
        model = tiny_model()
        train_dl, val_dl = loaders(batch_size=8, seed=3)
        cfg = make_cfg(tmp_path / folder, max_steps=steps, save_every=4, device="cuda", mixed_precision=True)
        Trainer(model, train_dl, val_dl, VOCAB, cfg).train(resume_from=resume)
        return model

    straight = run(8)
    assert next(straight.parameters()).device.type == "cuda"
    # resume the straight run's own step-4 checkpoint (a 4-step run has another LR schedule)
    resumed = run(8, resume=str(tmp_path / "a" / "ckpt" / "step_4.pt"), folder="b")
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(a, b, atol=1e-3, rtol=1e-3)  # CUDA backward atomics are not bit-exact

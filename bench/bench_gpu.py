"""GPU benchmark: training MFU and batch-1/8 decode, ours vs Hugging Face transformers, one run.

Run on a machine with one CUDA GPU (from the repository root)::

    python bench/bench_gpu.py                    # both parts (not yet run: no GPU lent to this project so far)
    python bench/bench_gpu.py --part train       # or --part decode
    python bench/bench_gpu.py --tiny --device cpu   # smoke run of the script itself, seconds

Training (issue 8, shape b): a GPT-2-small model (dim 768, 12 layers, 12 heads, vocab 50304,
seq 1024, LayerNorm, learned positions, GELU MLP, biases, tied head) in bf16 autocast with fp32
master weights and fused AdamW. Ours eager and ``torch.compile``-d, against transformers'
``GPT2LMHeadModel`` (SDPA attention) eager and compiled, with the same weights (exported through
``transformer_toolkit.convert``; logits are checked equal first) and the same loss (fp32
cross-entropy on the logits). Model FLOPs per token = 6 N + 12 L d T (N: every weight that does a
matmul, the tied head included; the attention term as in PaLM's appendix B); MFU = FLOPs/token x
tokens/s / 989e12 (H100 SXM dense bf16).

Decode: a ~1.1B Llama-style model (TinyLlama's shape: dim 2048, 22 layers, 32 heads, 4 kv heads,
SwiGLU 5632, vocab 32000) in bf16, a 16-token prompt, 256 greedy new tokens, batch 1 and 8. Ours
(decode step captured in a CUDA graph; and eager for reference) against transformers'
``generate`` with its dynamic cache and with ``cache_implementation="static"``. The bandwidth
figure: bytes read per decode step (every weight except the embedding table, plus the KV cache
up to the current position) x steps/s, over the device's HBM bandwidth (``HBM_SPECS``: 3.35 TB/s
for an H100 SXM, 4.8 for an H200; the measured device-to-device copy rate is printed beside it).

Decode times count decode steps only: each contender's median time for 256 new tokens minus
its median time for 2 (the same cache set-up, graph capture and prefill), over 254 steps.

Training rounds alternate between the contenders; medians are reported and written as JSON to
``bench/results/gpu_<part>_latest.json`` (``--tiny`` writes ``gpu_tiny.json``).
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from transformer_toolkit import generation
from transformer_toolkit.model import Transformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"
PEAK_BF16 = 989e12  # H100/H200 SXM dense bf16 FLOP/s (the MFU denominator)
# HBM bandwidth by device name (vendor specs, bytes/s); the first key found in the name wins
HBM_SPECS = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100 NVL": 3.9e12, "H100": 3.35e12}


def hbm_spec(device) -> float:
    """The vendor's HBM bandwidth of ``device`` (H100 SXM's 3.35 TB/s for unknown names)."""
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else ""
    return next((bw for key, bw in HBM_SPECS.items() if key in name), HBM_SPECS["H100"])

GPT2 = dict(vocab_size=50304, dim=768, n_layers=12, n_heads=12, max_seq=1024, attn="mha", ffn="ffn",
            hidden_dim=3072, norm="layernorm", pos_enc="learned", bias=True, tie_weights=True, eps=1e-5)
LLAMA_1B = dict(vocab_size=32000, dim=2048, n_layers=22, n_heads=32, n_kv_heads=4, attn="gqa", ffn="swiglu",
                hidden_dim=5632, norm="rmsnorm", pos_enc="rope", max_seq=2048, eps=1e-5, tie_weights=False)
TINY = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, max_seq=128, hidden_dim=128)


def allow_tf32(on: bool) -> None:
    torch.backends.cuda.matmul.allow_tf32 = on
    torch.backends.cudnn.allow_tf32 = on


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def to_hf_model(ours: Transformer, device):
    """transformers model with our weights, through the exporter (the tested mapping)."""
    import transformers

    from transformer_toolkit.convert.hf_config import to_hf_config
    from transformer_toolkit.convert.hf_weights import to_hf

    family, d = to_hf_config(ours.cfg)
    cls = getattr(transformers, d["architectures"][0])
    cfg_cls = transformers.AutoConfig.for_model(d["model_type"]).__class__
    hf_cfg = cfg_cls(**{k: v for k, v in d.items() if k not in ("architectures", "model_type")})
    hf = cls._from_config(hf_cfg, attn_implementation="sdpa")
    sd = to_hf(ours.state_dict(), family, ours.cfg.n_layers, ours.cfg.tie_weights)
    missing, unexpected = hf.load_state_dict(sd, strict=False)
    missing = [k for k in missing if not k.endswith("attn.bias") and k != "lm_head.weight"]
    assert not missing and not unexpected, (missing, unexpected)
    if ours.cfg.tie_weights:
        hf.tie_weights()
    return hf.to(device)


def matmul_flops_per_token(model: Transformer, seq: int) -> float:
    n = sum(p.numel() for name, p in model.named_parameters() if p.dim() >= 2 and not name.startswith("pos."))
    if model.cfg.tie_weights:
        pass  # the tied head is counted once, through embed.weight, and it does do a matmul
    return 6 * n + 12 * model.cfg.n_layers * model.cfg.dim * seq


# training -------------------------------------------------------------------------------------
def train_steps(fn, params, batches, device, steps: int) -> float:
    """tokens/s of ``steps`` optimizer steps after the warm-up batches."""
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.1, fused=device.type == "cuda")

    def step(x, y):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            logits = fn(x)
        loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    for x, y in batches[:3]:  # warm-up (and compilation)
        step(x, y)
    sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        x, y = batches[i % len(batches)]
        step(x, y)
    sync(device)
    return steps * batches[0][0].numel() / (time.perf_counter() - t0)


def bench_train(args, device, out: dict) -> None:
    shape = TINY | dict(norm="layernorm", pos_enc="learned", ffn="ffn", bias=True, tie_weights=True) \
        if args.tiny else GPT2
    seq, batch = (64, 4) if args.tiny else (1024, args.train_batch)
    torch.manual_seed(0)
    ours = Transformer(TransformerConfig(**shape)).to(device)
    hf = to_hf_model(ours, device)
    x = torch.randint(0, shape["vocab_size"], (2, 32), device=device)
    with torch.no_grad():
        diff = (ours(x)[0] - hf(x).logits).abs().max().item()
    print(f"train shape: logits max |ours - HF| = {diff:.2e} (fp32)")
    assert diff < 1e-3
    allow_tf32(True)  # after the fp32 check: TF32 matmuls round differently on the two sides
    g = torch.Generator(device="cpu").manual_seed(1)
    batches = [tuple(t.to(device) for t in torch.randint(0, shape["vocab_size"], (2, batch, seq), generator=g))
               for _ in range(4)]
    contenders = {
        "ours": (lambda m: lambda x: m(x)[0], ours),
        "hf": (lambda m: lambda x: m(x).logits, hf),
    }
    if not args.no_compile:
        contenders["ours_compiled"] = (lambda m: (lambda c: lambda x: c(x)[0])(torch.compile(m)), ours)
        contenders["hf_compiled"] = (lambda m: (lambda c: lambda x: c(x).logits)(torch.compile(m)), hf)
    fns = {name: (make(model), model) for name, (make, model) in contenders.items()}
    rates: dict[str, list[float]] = {name: [] for name in fns}
    for r in range(args.rounds):
        order = list(fns) if r % 2 == 0 else list(fns)[::-1]
        for name in order:
            fn, model = fns[name]
            rates[name].append(train_steps(fn, model.parameters(), batches, device, args.train_steps))
            print(f"  round {r}: {name:14s} {rates[name][-1]:,.0f} tok/s", flush=True)
    flops = matmul_flops_per_token(ours, seq)
    res = {}
    for name, v in rates.items():
        tps = statistics.median(v)
        res[name] = {"tokens_per_s": tps, "mfu": tps * flops / PEAK_BF16, "runs": v}
    for name in res:
        base = "hf_compiled" if name.endswith("compiled") else "hf"
        res[name]["vs_hf"] = res[name]["tokens_per_s"] / res[base]["tokens_per_s"]
    out["train"] = {"shape": shape, "batch": batch, "seq": seq, "flops_per_token": flops, "results": res}
    print(f"\ntraining, GPT-2-small shape, batch {batch} x {seq}, bf16 autocast:")
    for name, r in res.items():
        print(f"  {name:14s} {r['tokens_per_s']:>12,.0f} tok/s   MFU {100 * r['mfu']:5.1f}%   "
              f"vs HF {r['vs_hf']:.2f}x")


# decode ---------------------------------------------------------------------------------------
def copy_bandwidth(device) -> float:
    if device.type != "cuda":
        return float("nan")
    a = torch.empty(2 * 1024**3 // 2, dtype=torch.bfloat16, device=device)
    b = torch.empty_like(a)
    b.copy_(a)
    sync(device)
    t0 = time.perf_counter()
    for _ in range(10):
        b.copy_(a)
    sync(device)
    return 10 * 2 * a.numel() * a.element_size() / (time.perf_counter() - t0)


SHORT = 2  # new tokens of the short decode run whose time is subtracted (set-up, prefill, a first step)


def decode_bytes_per_step(model: Transformer, batch: int, ctx: float) -> float:
    weights = sum(p.numel() * p.element_size() for n, p in model.named_parameters() if n != "embed.weight")
    if model.cfg.tie_weights:
        weights += model.embed.weight.numel() * model.embed.weight.element_size()
    cache = model.make_cache(1, max_len=1)
    kv_per_token = sum(c.bytes_per_token() for c in cache)
    return weights + batch * ctx * kv_per_token


def time_decode(run, device, repeats: int) -> float:
    """Median wall time of ``run()`` over ``repeats`` (after one warm-up)."""
    run()
    times = []
    for _ in range(repeats):
        sync(device)
        t0 = time.perf_counter()
        run()
        sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench_decode(args, device, out: dict) -> None:
    shape = TINY | dict(n_kv_heads=2, attn="gqa") if args.tiny else LLAMA_1B
    new, prompt_len = (32, 8) if args.tiny else (args.new_tokens, 16)
    torch.manual_seed(0)
    ours = Transformer(TransformerConfig(**shape)).to(device)
    hf = to_hf_model(ours, device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    ours.to(dtype).eval()
    hf.to(dtype).eval()
    bw, spec = copy_bandwidth(device), hbm_spec(device)
    print(f"\ndecode: {ours.n_params()} params, {dtype}; device copy bandwidth {bw / 1e12:.2f} TB/s "
          f"(spec {spec / 1e12:.2f})")
    res = {}
    for batch in args.batches:
        prompt = torch.randint(0, shape["vocab_size"], (batch, prompt_len), device=device)

        def ours_run(graphs: bool, n: int, prompt=prompt, compile=False):
            generation.CUDA_GRAPHS = graphs
            return ours.generate(prompt, max_new=n, temperature=0, compile=compile)

        def hf_run(static: bool, n: int, prompt=prompt):
            kw = dict(cache_implementation="static") if static else {}
            return hf.generate(prompt, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                               pad_token_id=0, eos_token_id=None, **kw)

        same = torch.equal(ours_run(True, new)[:, prompt_len:], hf_run(False, new)[:, prompt_len:])
        runs = {"ours_graph": lambda n: ours_run(True, n), "ours_eager": lambda n: ours_run(False, n),
                "ours_compile": lambda n: ours_run(False, n, compile=True),  # torch.compile reduce-overhead
                "hf_dynamic": lambda n: hf_run(False, n), "hf_static": lambda n: hf_run(True, n)}
        if args.no_compile:
            del runs["ours_compile"]  # (HF's static cache may still compile its forward itself)
        # Decode steps only: a run of `new` tokens minus a run of SHORT. Both hold the same set-up
        # (the cache, a graph capture, the prefill, the first steps), so the difference is
        # new - SHORT decode steps.
        times = {k: time_decode(lambda f=f: f(new), device, args.decode_repeats)
                 - time_decode(lambda f=f: f(SHORT), device, args.decode_repeats) for k, f in runs.items()}
        generation.CUDA_GRAPHS = True
        bytes_step = decode_bytes_per_step(ours, batch, prompt_len + new / 2)
        row = {"same_tokens_as_hf": same}
        for k, t in times.items():
            steps_s = (new - SHORT) / t
            row[k] = {"tokens_per_s": batch * steps_s, "s": t, "hbm_fraction": bytes_step * steps_s / spec}
        for k in [k for k in row if k.startswith(("ours", "hf_static"))]:
            row[k]["vs_hf_dynamic"] = row[k]["tokens_per_s"] / row["hf_dynamic"]["tokens_per_s"]
        res[f"batch{batch}"] = row
        print(f"  batch {batch}: greedy tokens equal to HF's: {same}")
        for k in runs:
            r = row[k]
            print(f"    {k:12s} {r['tokens_per_s']:>9,.0f} tok/s   {100 * r['hbm_fraction']:5.1f}% of HBM spec   "
                  f"{r.get('vs_hf_dynamic', 1.0):.2f}x HF dynamic")
    out["decode"] = {"shape": shape, "dtype": str(dtype), "new_tokens": new, "prompt": prompt_len,
                     "copy_bandwidth": bw, "hbm_spec": spec, "results": res}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--part", choices=["all", "train", "decode"], default="all")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tiny", action="store_true", help="tiny shapes: a smoke run of the script")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-steps", type=int, default=20)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--new-tokens", type=int, default=256)
    ap.add_argument("--decode-repeats", type=int, default=3)
    args = ap.parse_args()
    device = torch.device(args.device)
    allow_tf32(False)
    import transformers

    out = {"date": datetime.now().isoformat(timespec="seconds"), "torch": torch.__version__,
           "transformers": transformers.__version__, "python": platform.python_version(),
           "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor(),
           "args": vars(args)}
    if args.part in ("all", "train"):
        bench_train(args, device, out)
    if args.part in ("all", "decode"):
        bench_decode(args, device, out)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / ("gpu_tiny.json" if args.tiny else f"gpu_{args.part}_latest.json")
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()

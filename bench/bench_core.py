"""Core CPU benchmark: our ``Transformer`` vs Hugging Face ``LlamaForCausalLM`` on the same shape.

Run (from the repository root)::

    python bench/bench_core.py                 # full run: ~2.5 min on 2 idle cores, ~5.5 min when shared
    python bench/bench_core.py --quick         # tiny smoke run, a few seconds
    python bench/bench_core.py --batch 8 --rounds 5 --threads 2

Both models are built on the README's Shakespeare shape (vocab 8000, dim 384, 6 layers,
6 heads, 3 kv heads (GQA), SwiGLU hidden 1536, RMSNorm, RoPE theta 10000, no biases, untied
head, max_seq 512) and hold the SAME weights: ours are copied into HF's Llama (SDPA attention),
and the fp32 logits of the two are asserted equal (atol 1e-4) before anything is timed.

Measured, alternating ours/HF within each round (the order flips every round) and reported as
the median over rounds, because the machine is noisy:

1. training throughput (tokens/s) of one step = forward + cross-entropy + backward +
   ``torch.optim.AdamW`` step (identical settings both sides; fused when the CPU kernel exists),
   in fp32 and under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (fp32 master weights);
2. batch-1 greedy decode (tokens/s, fp32): a 16-token prompt plus 128 new tokens; ours via
   ``model.generate(x, max_new=128, temperature=0)``, HF via ``generate(..., do_sample=False)``
   with its default dynamic cache and no EOS (so it never stops early); whether the two
   produce the same tokens is printed;
3. this CPU's matmul peak (best ``torch.mm`` of large square matrices) in fp32 and bf16, and each
   training config's achieved FLOP/s as a share of the peak of its dtype (model FLOP
   utilisation), with training FLOPs per token = 6 * N + 12 * n_layers * dim * seq, where N
   counts every weight that does a matmul (all Linear layers incl. the lm head, not the
   embedding lookup).

The table is printed and the same numbers are written as JSON to
``bench/results/core_<timestamp>.json`` and ``bench/results/core_latest.json`` (``--quick`` writes
``core_quick_*`` instead, so a smoke run never replaces the latest real result).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from transformers import LlamaConfig, LlamaForCausalLM

from transformer_toolkit.compare.measure import matmul_rates
from transformer_toolkit.model import Transformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"

FULL_SHAPE = dict(vocab_size=8000, dim=384, n_layers=6, n_heads=6, n_kv_heads=3, hidden_dim=1536, max_seq=512)
QUICK_SHAPE = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq=128)


# models ---------------------------------------------------------------------------------------
def build_ours(shape: dict) -> Transformer:
    cfg = TransformerConfig(**shape, attn="gqa", ffn="swiglu", norm="rmsnorm", pos_enc="rope",
                            rope_theta=10000.0, bias=False, tie_weights=False, dropout=0.0)
    return Transformer(cfg)


def build_hf(ours: Transformer) -> LlamaForCausalLM:
    c = ours.cfg
    hf_cfg = LlamaConfig(
        vocab_size=c.vocab_size, hidden_size=c.dim, intermediate_size=c.hidden_dim,
        num_hidden_layers=c.n_layers, num_attention_heads=c.n_heads, num_key_value_heads=c.n_kv_heads,
        head_dim=c.head_dim, max_position_embeddings=c.max_seq, rms_norm_eps=c.eps,
        rope_parameters={"rope_type": "default", "rope_theta": c.rope_theta},
        attention_bias=False, mlp_bias=False, attention_dropout=0.0, hidden_act="silu",
        tie_word_embeddings=False, pad_token_id=0, bos_token_id=None, eos_token_id=None,
    )
    hf = LlamaForCausalLM._from_config(hf_cfg, attn_implementation="sdpa")
    hf.load_state_dict(hf_state_dict(ours), strict=True)
    return hf


def hf_state_dict(ours: Transformer) -> dict[str, torch.Tensor]:
    sd = ours.state_dict()
    out = {"model.embed_tokens.weight": sd["embed.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["head.weight"]}
    for i in range(ours.cfg.n_layers):
        p, q = f"blocks.{i}.", f"model.layers.{i}."
        out[q + "input_layernorm.weight"] = sd[p + "attn_norm.weight"]
        out[q + "post_attention_layernorm.weight"] = sd[p + "ffn_norm.weight"]
        for n in ("q", "k", "v", "o"):
            out[q + f"self_attn.{n}_proj.weight"] = sd[p + f"attn.{n}_proj.weight"]
        for n in ("gate", "up", "down"):
            out[q + f"mlp.{n}_proj.weight"] = sd[p + f"ffn.{n}_proj.weight"]
    return {k: v.detach().clone() for k, v in out.items()}


def sync_weights(ours: Transformer, hf: LlamaForCausalLM, init: dict[str, torch.Tensor]) -> None:
    """Reset ours to the initial weights and copy them into HF: every section starts from the
    same function on both sides (training steps make the two drift apart numerically)."""
    ours.load_state_dict(init, strict=True)
    hf.load_state_dict(hf_state_dict(ours), strict=True)


def ours_logits(model, x):
    return model(x)[0]


def hf_logits(model, x):
    return model(input_ids=x, use_cache=False).logits


def check_same_function(ours, hf, vocab: int, seq: int) -> float:
    x = torch.randint(0, vocab, (2, seq))
    ours.eval()
    hf.eval()
    with torch.no_grad():
        diff = (ours_logits(ours, x).float() - hf_logits(hf, x).float()).abs().max().item()
    assert diff < 1e-4, f"ours and HF logits differ by {diff:.3g} (> 1e-4): the weight copy or a layer disagrees"
    return diff


# FLOPs and peak -----------------------------------------------------------------------------------
def matmul_params(model: Transformer) -> int:
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))


def train_flops_per_token(model: Transformer, seq: int) -> float:
    c = model.cfg
    return 6 * matmul_params(model) + 12 * c.n_layers * c.dim * seq


def matmul_peak(dtype: torch.dtype, sizes: list[int], reps: int) -> dict:
    """The best torch.mm FLOP/s over ``sizes`` and the size that reached it."""
    rates = matmul_rates(dtype, sizes, reps)
    size = max(rates, key=rates.get)
    return {"flops": rates[size], "size": size}


# measurements -----------------------------------------------------------------------------------
def make_optimizer(model, fused: bool):
    return torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8,
                             fused=fused or None)


def fused_adamw_works() -> bool:
    try:
        p = torch.nn.Parameter(torch.randn(8))
        p.grad = torch.randn(8)
        torch.optim.AdamW([p], fused=True).step()
        return True
    except Exception:  # noqa: BLE001 - any failure means "use the foreach/for-loop path"
        return False


def train_step(model, logits_fn, opt, x, y, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits = logits_fn(model, x)
        loss = F.cross_entropy(logits.float().view(-1, logits.shape[-1]), y.view(-1))
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def bench_train(sides: dict, batch: int, seq: int, vocab: int, steps: int, rounds: int, warmup: int,
                bf16: bool, fused: bool) -> dict:
    x = torch.randint(0, vocab, (batch, seq))
    y = torch.randint(0, vocab, (batch, seq))
    opts = {}
    for name, (model, fn) in sides.items():
        model.train()
        opts[name] = make_optimizer(model, fused)
        for _ in range(warmup):
            train_step(model, fn, opts[name], x, y, bf16)
    def run(name, model, fn):
        for _ in range(steps):
            train_step(model, fn, opts[name], x, y, bf16)

    result = alternate(sides, rounds, run, steps * batch * seq)
    for opt in opts.values():  # free the Adam state before the next config
        opt.state.clear()
    return result


def alternate(sides: dict, rounds: int, run, tokens: int) -> dict:
    """Time ``run(name, model, fn)`` for every side, flipping the order every round;
    tokens/s per round and the median."""
    tps = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            run(name, *sides[name])
            tps[name].append(tokens / (time.perf_counter() - t))
    return {name: {"median": statistics.median(v), "rounds": v} for name, v in tps.items()}


def generate_ours(model, x, new):
    return model.generate(x, max_new=new, temperature=0)


def generate_hf(model, x, new):
    with torch.inference_mode():
        return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                              do_sample=False, pad_token_id=0, eos_token_id=None)


def bench_decode(sides: dict, vocab: int, prompt: int, new: int, rounds: int) -> dict:
    x = torch.randint(0, vocab, (1, prompt))
    outs = {}
    for name, (model, fn) in sides.items():
        model.eval()
        outs[name] = fn(model, x, new)  # warm up, and keep the tokens for the comparison
        assert outs[name].shape == (1, prompt + new), f"{name} generated shape {tuple(outs[name].shape)}"
    result = alternate(sides, rounds, lambda name, model, fn: fn(model, x, new), new)
    names = list(sides)
    a, b = (outs[n][0, prompt:] for n in names)
    same = int((a == b).sum())
    first_diff = None if same == new else int((a != b).nonzero()[0, 0])
    result["tokens_match"] = same == new
    result["matching_tokens"] = same
    result["first_mismatch"] = first_diff
    return result


# report ---------------------------------------------------------------------------------------
def fmt_table(res: dict) -> str:
    rows = [("config", "ours", "HF", "ours/HF", "MFU ours", "MFU HF")]
    for key, label, unit in (("train_fp32", "train fp32", "tok/s"), ("train_bf16", "train bf16 autocast", "tok/s"),
                             ("decode_fp32", "decode b=1 fp32", "tok/s"),
                             ("decode_bf16", "decode b=1 bf16 weights", "tok/s")):
        r = res[key]
        mfu = res.get("mfu", {}).get(key)
        rows.append((f"{label} ({unit})", f"{r['ours']['median']:.1f}", f"{r['hf']['median']:.1f}",
                     f"{r['ours']['median'] / r['hf']['median']:.3f}",
                     f"{100 * mfu['ours']:.1f}%" if mfu else "-", f"{100 * mfu['hf']:.1f}%" if mfu else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True)))
             for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=None, help="training batch size (default 16; 2 with --quick)")
    ap.add_argument("--seq", type=int, default=None, help="training sequence length (default 128; 32 with --quick)")
    ap.add_argument("--steps", type=int, default=None, help="timed training steps per side per round (default 3)")
    ap.add_argument("--rounds", type=int, default=None, help="alternating ours/HF rounds (default 5)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch intra-op threads (default: all cores)")
    ap.add_argument("--quick", action="store_true", help="tiny model and sizes: a smoke run of a few seconds")
    args = ap.parse_args()

    quick = args.quick
    shape = QUICK_SHAPE if quick else FULL_SHAPE
    batch = args.batch or (2 if quick else 16)
    seq = args.seq or (32 if quick else 128)
    steps = args.steps or (2 if quick else 3)
    rounds = args.rounds or (2 if quick else 5)
    warmup = 1 if quick else 2
    prompt, new = 16, (16 if quick else 128)
    decode_rounds = rounds
    mm_sizes, mm_reps = ([256, 512], 2) if quick else ([2048, 3072, 4096], 3)
    if seq > shape["max_seq"] or prompt + new > shape["max_seq"]:
        ap.error(f"--seq {seq} is longer than max_seq {shape['max_seq']}")
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    load_start = os.getloadavg()
    if load_start[0] > 0.5:
        print(f"warning: load average {load_start[0]:.2f} before starting; other processes share the cores, "
              f"so absolute numbers are pessimistic (the interleaved ours/HF ratios are the robust part)")

    ours = build_ours(shape)
    hf = build_hf(ours)
    init = {k: v.detach().clone() for k, v in ours.state_dict().items()}
    diff = check_same_function(ours, hf, shape["vocab_size"], seq)
    fused = fused_adamw_works()
    n_mm = matmul_params(ours)
    fpt = train_flops_per_token(ours, seq)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}, "
          f"cpu {platform.processor() or platform.machine()} x{os.cpu_count()}")
    print(f"shape: {shape}, attn gqa, swiglu, rmsnorm, rope, untied; train batch {batch} x seq {seq}; "
          f"{steps} steps x {rounds} rounds; decode prompt {prompt} + {new} new, {decode_rounds} rounds")
    print(f"sanity: max |logits_ours - logits_hf| (fp32) = {diff:.2e}  (< 1e-4: same function)")
    print(f"params: {ours.num_parameters():,} total, {n_mm:,} in matmuls (N); AdamW fused={fused}")
    print(f"FLOPs/token (train) = 6*N + 12*n_layers*dim*seq = 6*{n_mm:,} + 12*{shape['n_layers']}*{shape['dim']}*"
          f"{seq} = {fpt / 1e6:.2f} MFLOP")

    sides = {"ours": (ours, ours_logits), "hf": (hf, hf_logits)}
    res: dict = {}
    t0 = time.perf_counter()
    print("peak matmul ...", flush=True)
    peaks = {"fp32": matmul_peak(torch.float32, mm_sizes, mm_reps),
             "bf16": matmul_peak(torch.bfloat16, mm_sizes, mm_reps)}
    for key, bf16 in (("train_fp32", False), ("train_bf16", True)):
        print(f"{key} ...", flush=True)
        sync_weights(ours, hf, init)
        res[key] = bench_train(sides, batch, seq, shape["vocab_size"], steps, rounds, warmup, bf16, fused)
    print("decode ...", flush=True)
    sync_weights(ours, hf, init)
    gens = {"ours": (ours, generate_ours), "hf": (hf, generate_hf)}
    res["decode_fp32"] = bench_decode(gens, shape["vocab_size"], prompt, new, decode_rounds)
    print("decode bf16 ...", flush=True)  # both models cast to bf16 weights
    ours_b = build_ours(shape)
    ours_b.load_state_dict(ours.state_dict())
    hf_b = build_hf(ours_b)
    gens_b = {"ours": (ours_b.to(torch.bfloat16), generate_ours), "hf": (hf_b.to(torch.bfloat16), generate_hf)}
    res["decode_bf16"] = bench_decode(gens_b, shape["vocab_size"], prompt, new, decode_rounds)
    # the peak again after the runs, keeping the best: a peak taken while another process
    # held a core would inflate every MFU share
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        again = matmul_peak(dt, mm_sizes, mm_reps)
        if again["flops"] > peaks[name]["flops"]:
            peaks[name] = again
    res["mfu"] = {
        key: {side: res[key][side]["median"] * fpt / peaks[dt]["flops"] for side in sides}
        for key, dt in (("train_fp32", "fp32"), ("train_bf16", "bf16"))
    }
    elapsed = time.perf_counter() - t0

    print()
    print(fmt_table(res))
    for key in ("decode_fp32", "decode_bf16"):
        d = res[key]
        print(f"\n{key}: greedy tokens identical: {d['tokens_match']} ({d['matching_tokens']}/{new} match"
              + (f", first mismatch at new token {d['first_mismatch']})" if not d["tokens_match"] else ")"), end="")
    print()
    print(f"matmul peak (best torch.mm, n in {mm_sizes}, before and after the runs): "
          f"fp32 {peaks['fp32']['flops'] / 1e9:.1f} GFLOP/s (n={peaks['fp32']['size']}), "
          f"bf16 {peaks['bf16']['flops'] / 1e9:.1f} GFLOP/s (n={peaks['bf16']['size']})")
    for key in ("train_fp32", "train_bf16"):
        print(f"{key}: achieved GFLOP/s ours {res[key]['ours']['median'] * fpt / 1e9:.1f}, "
              f"HF {res[key]['hf']['median'] * fpt / 1e9:.1f}")
    print(f"ratio > 1: ours faster. timed section {elapsed:.0f} s")

    stamp = datetime.now().strftime("%Y%m%d_%H%M%S")
    prefix = "core_quick" if quick else "core"  # a smoke run never replaces the real core_latest.json
    report = {
        "timestamp": stamp,
        "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(), "machine": platform.machine(),
                "processor": platform.processor(), "loadavg_start": load_start, "loadavg_end": os.getloadavg()},
        "settings": {"shape": shape, "batch": batch, "seq": seq, "steps": steps, "rounds": rounds, "warmup": warmup,
                     "decode_prompt": prompt, "decode_new": new, "quick": quick, "adamw_fused": fused},
        "sanity_max_abs_logit_diff_fp32": diff,
        "params_total": ours.num_parameters(),
        "params_matmul_N": n_mm,
        "train_flops_per_token": fpt,
        "flops_formula": "6*N + 12*n_layers*dim*seq (N = weights of every Linear incl. lm head, no embedding)",
        "peak_matmul_flops": peaks,
        "results": res,
        "ratios_ours_over_hf": {k: res[k]["ours"]["median"] / res[k]["hf"]["median"]
                                for k in ("train_fp32", "train_bf16", "decode_fp32", "decode_bf16")},
        "elapsed_s": elapsed,
    }
    RESULTS.mkdir(parents=True, exist_ok=True)
    text = json.dumps(report, indent=2)
    (RESULTS / f"{prefix}_{stamp}.json").write_text(text + "\n")
    (RESULTS / f"{prefix}_latest.json").write_text(text + "\n")
    print(f"wrote {RESULTS / f'{prefix}_{stamp}.json'} and {prefix}_latest.json")


if __name__ == "__main__":
    main()

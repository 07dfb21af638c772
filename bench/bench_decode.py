"""Decode tokens/s, ours vs HF transformers' generate, side by side in one process.

Run (from the repository root)::

    python bench/bench_decode.py                 # ~6 min on 2 cores (compiles included)
    python bench/bench_decode.py --quick         # a tiny model: a smoke run of about a minute
    python bench/bench_decode.py --batches 1 --dtypes bf16
    python bench/bench_decode.py --shape smollm2 --batches 1   # SmolLM2-135M's shape, random weights

The model is the README's Shakespeare shape (dim 384, 6 layers, 6 heads / 3 kv heads, SwiGLU
1536, vocab 8000, rope), with the same weights on both sides (``LlamaForCausalLM``, SDPA). Each
side greedily decodes ``--new`` tokens (default 256) after a 16-token prompt, at batch 1 and 8,
with fp32 weights and with bf16 weights:

- ``ours``: ``model.generate(x, new, temperature=0)``, eager (the default);
- ``ours_compile``: the same with ``compile=True`` (a torch.compile'd decode step; its one-time
  compile is timed separately and reported as ``compile_s``);
- ``hf``: ``hf.generate(..., do_sample=False)`` with its default dynamic cache;
- ``hf_static``: the same with ``cache_implementation="static"``.

Rounds alternate the sides, flipping the order every round; tokens/s is new tokens x batch over
the wall time of one generate call, and the median of the rounds is reported. The first
generated tokens of every side are compared with ours (fp32 greedy decoding of the same function
should agree; bf16 rounding differs between implementations, so there the count of matching
tokens is reported, not asserted). Writes bench/results/decode_latest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
import transformers
from bench_core import build_hf

from transformer_toolkit.model import Transformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"
SHAPE = dict(vocab_size=8000, dim=384, n_layers=6, n_heads=6, n_kv_heads=3, hidden_dim=1536, max_seq=512)
# SmolLM2-135M's shape (30 layers of width 576, 9 heads / 3 kv heads, vocab 49152), random weights
SMOLLM2_SHAPE = dict(vocab_size=49152, dim=576, n_layers=30, n_heads=9, n_kv_heads=3, hidden_dim=1536, max_seq=512)
QUICK_SHAPE = dict(vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, hidden_dim=128, max_seq=128)


def model_pairs(shape: dict):
    """``pairs(dtype)`` -> ``(ours, hf)``: our Llama-style model of ``shape`` (GQA, SwiGLU, RMSNorm,
    rope, untied head; random weights, seed 0) and ``LlamaForCausalLM`` with the same weights, in
    ``dtype`` ("fp32" or "bf16"), both in eval mode."""
    torch.manual_seed(0)
    cfg = TransformerConfig(**shape, attn="gqa", ffn="swiglu", norm="rmsnorm", pos_enc="rope", bias=False,
                            tie_weights=False, dropout=0.0)
    base = Transformer(cfg).eval()

    def pairs(dtype: str):
        ours = base
        if dtype == "bf16":
            ours = Transformer(cfg).eval()
            ours.load_state_dict(base.state_dict())
            ours = ours.to(torch.bfloat16)
        return ours, build_hf(ours).eval().to(ours.embed.weight.dtype)
    return pairs


def report_header(script: str, settings: dict) -> dict:
    """The JSON report's date, command line, environment and settings, with empty results."""
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": f"{script} " + " ".join(os.sys.argv[1:]),
            "env": {"torch": torch.__version__, "transformers": transformers.__version__,
                    "machine": platform.machine(), "threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
            "settings": settings, "results": {}}


def ours_fn(compile: bool):
    def run(model, x, new):
        return model.generate(x, max_new=new, temperature=0, compile=compile)
    return run


def hf_fn(static: bool):
    extra = {"cache_implementation": "static"} if static else {}

    def run(model, x, new):
        with torch.inference_mode():
            return model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=new, min_new_tokens=new,
                                  do_sample=False, pad_token_id=0, eos_token_id=None, **extra)
    return run


def bench_case(ours: Transformer, hf, batch: int, prompt: int, new: int, rounds: int) -> dict:
    g = torch.Generator().manual_seed(batch)
    x = torch.randint(0, ours.cfg.vocab_size, (batch, prompt), generator=g)
    sides = {"ours": (ours, ours_fn(False)), "ours_compile": (ours, ours_fn(True)),
             "hf": (hf, hf_fn(False)), "hf_static": (hf, hf_fn(True))}
    result, outs = {}, {}
    for name, (model, fn) in sides.items():  # warm-up: compiles, allocations; keep the tokens
        t = time.perf_counter()
        outs[name] = fn(model, x, new)
        result[name] = {"first_call_s": time.perf_counter() - t}
        assert outs[name].shape == (batch, prompt + new), f"{name}: shape {tuple(outs[name].shape)}"
    tps = {name: [] for name in sides}
    names = list(sides)
    for r in range(rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            model, fn = sides[name]
            t = time.perf_counter()
            fn(model, x, new)
            tps[name].append(batch * new / (time.perf_counter() - t))
    ref = outs["ours"][:, prompt:]
    for name in names:
        r = result[name]
        r["rounds"] = tps[name]
        r["median"] = statistics.median(tps[name])
        r["tokens_equal_to_ours"] = int((outs[name][:, prompt:] == ref).sum()) / ref.numel()
    for name in names:
        result[name]["vs_hf"] = result[name]["median"] / result["hf"]["median"]
        result[name]["vs_hf_static"] = result[name]["median"] / result["hf_static"]["median"]
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--dtypes", nargs="+", default=["fp32", "bf16"], choices=["fp32", "bf16"])
    ap.add_argument("--new", type=int, default=None, help="new tokens per call (default 256; 32 with --quick)")
    ap.add_argument("--prompt", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=None, help="alternating rounds (default 5; 2 with --quick)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--quick", action="store_true", help="tiny model: a smoke run")
    ap.add_argument("--shape", choices=["shakespeare", "smollm2"], default="shakespeare",
                    help="smollm2: SmolLM2-135M's shape (random weights); writes decode_smollm2_latest.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    shape = QUICK_SHAPE if args.quick else SMOLLM2_SHAPE if args.shape == "smollm2" else SHAPE
    new = args.new or (32 if args.quick else 256)
    rounds = args.rounds or (2 if args.quick else 5)
    pairs = model_pairs(shape)
    start = time.perf_counter()
    report = report_header("bench_decode.py", {"shape": shape, "prompt": args.prompt, "new": new, "rounds": rounds})
    print(f"decode {new} new tokens after a {args.prompt}-token prompt; shape {shape}; "
          f"{torch.get_num_threads()} threads; median of {rounds} rounds")
    print(f"{'case':<12}{'ours':>8}{'compiled':>10}{'hf':>8}{'hf static':>11}"
          f"{'ours/hf':>9}{'comp/hf':>9}{'comp/static':>13}{'compile s':>11}")
    for dtype in args.dtypes:
        ours, hf = pairs(dtype)
        for batch in args.batches:
            res = bench_case(ours, hf, batch, args.prompt, new, rounds)
            key = f"{dtype}_b{batch}"
            report["results"][key] = res
            m = {k: v["median"] for k, v in res.items()}
            print(f"{key:<12}{m['ours']:>8.0f}{m['ours_compile']:>10.0f}{m['hf']:>8.0f}{m['hf_static']:>11.0f}"
                  f"{res['ours']['vs_hf']:>9.2f}{res['ours_compile']['vs_hf']:>9.2f}"
                  f"{res['ours_compile']['vs_hf_static']:>13.2f}{res['ours_compile']['first_call_s']:>11.1f}",
                  flush=True)
            same = {k: round(v["tokens_equal_to_ours"], 3) for k, v in res.items() if k != "ours"}
            print(f"{'':<12}tokens equal to ours: {same}")
    report["elapsed_s"] = time.perf_counter() - start
    RESULTS.mkdir(exist_ok=True)
    name = "decode_quick.json" if args.quick else "decode_smollm2_latest.json" if args.shape == "smollm2" \
        else "decode_latest.json"
    (RESULTS / name).write_text(json.dumps(report, indent=1))
    print(f"wrote {RESULTS / name} ({report['elapsed_s']:.0f} s)")


if __name__ == "__main__":
    main()

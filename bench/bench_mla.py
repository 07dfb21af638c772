"""MLA against GQA: KV-cache bytes per token and batch-1 decode speed, side by side.

Run (from the repository root)::

    python bench/bench_mla.py            # dim 512, 8 layers, 8 heads of 64; 256 new tokens; fp32
    python bench/bench_mla.py --quick    # seconds

Four models with the same width and depth, differing only in attention: MHA (8 kv heads), GQA
(2 kv heads), MQA (1) and DeepSeek-V2 MLA (a ``latent_dim`` latent plus a ``rope_head_dim`` rope
key per token). For each: the cache bytes per token (all layers, batch 1, as ``make_cache``
allocates them), the parameter count, and greedy decode tokens/s at batch 1 for ``--new``
tokens after a 32-token prompt, with rounds alternating between the models (the order reverses
every round) and the median reported, eager and with ``generate(..., compile=True)``.
Results: ``bench/results/mla_latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from transformer_toolkit.model import Transformer, TransformerConfig

RESULTS = Path(__file__).resolve().parent / "results"


def build(args, attn: str, **kw) -> Transformer:
    torch.manual_seed(0)
    cfg = TransformerConfig(vocab_size=args.vocab, dim=args.dim, n_layers=args.layers, n_heads=args.heads, attn=attn,
                            max_seq=args.new + 64, **kw)
    return Transformer(cfg).eval()


def decode_tok_s(model: Transformer, prompt: torch.Tensor, new: int, compile: bool = False) -> float:
    with torch.inference_mode():
        t = time.perf_counter()
        out = model.generate(prompt, max_new=new, temperature=0, compile=compile)
        dt = time.perf_counter() - t
    assert out.shape[1] == prompt.shape[1] + new
    return new / dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--layers", type=int, default=8)
    ap.add_argument("--heads", type=int, default=8)
    ap.add_argument("--latent", type=int, default=128, help="MLA latent_dim (DeepSeek-V2: 4 x head_dim)")
    ap.add_argument("--vocab", type=int, default=8000)
    ap.add_argument("--new", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.dim, args.layers, args.heads, args.latent, args.new, args.rounds = 64, 2, 4, 32, 16, 2
    head_dim = args.dim // args.heads
    models = {
        "mha": build(args, "mha"),
        "gqa (2 kv heads)": build(args, "gqa", n_kv_heads=2),
        "mqa": build(args, "mqa", n_kv_heads=1),
        f"mla (latent {args.latent})": build(args, "mla", latent_dim=args.latent, rope_head_dim=head_dim // 2),
    }
    prompt = torch.randint(0, args.vocab, (1, 32), generator=torch.Generator().manual_seed(0))
    for m in models.values():
        decode_tok_s(m, prompt, 4)  # warm up (decode layouts, allocator)
        decode_tok_s(m, prompt, args.new, compile=True)  # compile the step for this cache length
    speeds = {name: [] for name in models}
    compiled = {name: [] for name in models}
    for r in range(args.rounds):
        order = list(models) if r % 2 == 0 else list(models)[::-1]
        for name in order:
            speeds[name].append(decode_tok_s(models[name], prompt, args.new))
            compiled[name].append(decode_tok_s(models[name], prompt, args.new, compile=True))

    rows = {}
    mha_bytes = sum(c.bytes_per_token() for c in models["mha"].make_cache(1))
    for name, m in models.items():
        cache_bytes = sum(c.bytes_per_token() for c in m.make_cache(1))
        rows[name] = {"cache_bytes_per_token": cache_bytes, "vs_mha_cache": cache_bytes / mha_bytes,
                      "params": m.num_parameters(), "decode_tok_s": statistics.median(speeds[name]),
                      "rounds": speeds[name], "compiled_decode_tok_s": statistics.median(compiled[name]),
                      "compiled_rounds": compiled[name]}
    print(f"dim {args.dim}, {args.layers} layers, {args.heads} heads of {head_dim}, vocab {args.vocab}; "
          f"batch 1, {args.new} new tokens, fp32, {torch.get_num_threads()} threads; median of {args.rounds}")
    print(f"{'attention':<20}{'cache B/token':>14}{'x MHA':>8}{'params':>12}{'decode tok/s':>14}{'compiled':>10}")
    for name, r in rows.items():
        print(f"{name:<20}{r['cache_bytes_per_token']:>14,}{r['vs_mha_cache']:>8.3f}{r['params']:>12,}"
              f"{r['decode_tok_s']:>14.1f}{r['compiled_decode_tok_s']:>10.1f}")
    record = {"settings": vars(args), "torch": torch.__version__, "threads": torch.get_num_threads(),
              "loadavg": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "results": rows}
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / ("mla_quick.json" if args.quick else "mla_latest.json")
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()

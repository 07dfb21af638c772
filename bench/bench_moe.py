"""MoE layer throughput side by side: our top-2-of-8 ``moe`` layer, a dense SwiGLU with the same
active parameters, and transformers' ``MixtralSparseMoeBlock`` holding the same weights.

Run (from the repository root)::

    python bench/bench_moe.py              # dim 384, expert hidden 768, 16 x 128 tokens, fp32 + bf16
    python bench/bench_moe.py --quick      # seconds

One step = forward + backward of the layer alone (a fixed random upstream gradient; no
optimizer), under bf16 autocast or not. The sides:

- ``ours_moe``: ``TokenChoiceMoE`` (8 experts, top-2, renormalised weights), dispatch by sort and
  grouped matmuls;
- ``dense``: ``SwiGLU`` of hidden ``2 * expert_hidden``: the same matmul parameters a token uses
  in the MoE layer (two experts), so the same FLOPs but for the router and dispatch;
- ``mixtral_<impl>``: ``MixtralSparseMoeBlock`` with our router and expert weights, once per
  experts implementation asked for (default ``eager``, a loop over experts, and ``grouped_mm``;
  ``batched_mm`` gathers a weight copy per token, gigabytes at this size, so only on request).
  Its output is checked equal to ours (fp32, atol 1e-5) before timing.

Rounds alternate (order reversed every round); the median tokens/s per side is reported with
the load average. Results: ``bench/results/moe_latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import transformers

from transformer_toolkit.model.ffn import SwiGLU
from transformer_toolkit.model.moe import TokenChoiceMoE

RESULTS = Path(__file__).resolve().parent / "results"


def build_mixtral(ours: TokenChoiceMoE, dim: int, hidden: int, impl: str):
    """A Mixtral sparse block with ``ours``' weights, or None if ``impl`` is not offered."""
    from transformers import MixtralConfig
    from transformers.models.mixtral.modeling_mixtral import MixtralSparseMoeBlock

    cfg = MixtralConfig(hidden_size=dim, intermediate_size=hidden, num_local_experts=ours.experts.gate_proj.shape[0],
                        num_experts_per_tok=ours.top_k, router_jitter_noise=0.0, hidden_act="silu")
    cfg._experts_implementation = impl
    block = MixtralSparseMoeBlock(cfg)
    e = ours.experts
    with torch.no_grad():
        block.gate.weight.copy_(ours.router.weight)
        block.experts.gate_up_proj.copy_(torch.cat([e.gate_proj, e.up_proj], dim=1))  # (E, 2h, d): [gate; up]
        block.experts.down_proj.copy_(e.down_proj)
    x = torch.randn(2, 16, dim)
    try:
        with torch.no_grad():
            diff = (block(x) - ours(x)[0]).abs().max().item()
    except (KeyError, ValueError, RuntimeError, NotImplementedError) as err:
        print(f"mixtral {impl}: not available here ({type(err).__name__}: {str(err).splitlines()[0][:120]})")
        return None, None
    assert diff < 1e-5, f"Mixtral ({impl}) and our MoE differ by {diff:.3g}: the weight copy or the routing disagrees"
    return block, diff


def step(module, x, grad, bf16: bool) -> None:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out = module(x)
        out = out[0] if isinstance(out, tuple) else out
    out.float().backward(grad)
    for p in module.parameters():
        p.grad = None
    x.grad = None


def bench(sides: dict, x, grad, bf16: bool, steps: int, rounds: int) -> dict:
    for m in sides.values():
        for _ in range(2):
            step(m, x, grad, bf16)
    tps = {n: [] for n in sides}
    names = list(sides)
    for r in range(rounds):
        for n in names if r % 2 == 0 else names[::-1]:
            t = time.perf_counter()
            for _ in range(steps):
                step(sides[n], x, grad, bf16)
            tps[n].append(steps * x.shape[0] * x.shape[1] / (time.perf_counter() - t))
    res = {n: {"median": statistics.median(v), "rounds": v} for n, v in tps.items()}
    dense = res["dense"]["median"]
    for r in res.values():
        r["vs_dense"] = r["median"] / dense
    res["load"] = os.getloadavg()
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--hidden", type=int, default=768, help="width of each expert (dense: twice this)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--mixtral", default="eager,grouped_mm", help="comma list of transformers experts implementations")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.dim, args.hidden, args.batch, args.seq, args.steps, args.rounds = 64, 128, 2, 32, 2, 2
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    ours = TokenChoiceMoE(args.dim, args.hidden, n_experts=8, top_k=2, aux_weight=0.01)
    dense = SwiGLU(args.dim, 2 * args.hidden)
    for p in [*ours.parameters(), *dense.parameters()]:
        torch.nn.init.normal_(p, 0.0, 0.02)
    sides = {"ours_moe": ours, "dense": dense}
    diffs = {}
    for impl in args.mixtral.split(","):
        block, diff = build_mixtral(ours, args.dim, args.hidden, impl)
        if block is not None:
            sides[f"mixtral_{impl}"], diffs[impl] = block, diff
    x = torch.randn(args.batch, args.seq, args.dim, requires_grad=True)
    grad = torch.randn(args.batch, args.seq, args.dim)
    active = 2 * 3 * args.dim * args.hidden
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, threads {torch.get_num_threads()}; "
          f"dim {args.dim}, expert hidden {args.hidden}, 8 experts top-2, {args.batch}x{args.seq} tokens; "
          f"active matmul params per token {active:,} (dense SwiGLU hidden {2 * args.hidden}: the same)")
    print("sanity: max |mixtral - ours| (fp32): " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()))
    results = {}
    for prec in ("fp32", "bf16"):
        print(f"{prec} ...", flush=True)
        results[prec] = bench(sides, x, grad, prec == "bf16", args.steps, args.rounds)
    print(f"\n{'precision':9s}  {'side':20s} {'tok/s':>9s}  {'x dense':>7s}  {'x best mixtral':>14s}")
    for prec, res in results.items():
        best_mix = max((r["median"] for n, r in res.items() if n.startswith("mixtral")), default=None)
        for n, r in res.items():
            if n == "load":
                continue
            vs_mix = f"{r['median'] / best_mix:.2f}" if best_mix else "-"
            print(f"{prec:9s}  {n:20s} {r['median']:9.0f}  {r['vs_dense']:7.3f}  {vs_mix:>14s}")
        print(f"{prec:9s}  load average {res['load'][0]:.2f}")
    name = "moe_quick" if args.quick else "moe"
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{name}_latest.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["bench_moe.py", *sys.argv[1:]]),
        "torch": torch.__version__, "transformers": transformers.__version__, "threads": torch.get_num_threads(),
        "settings": vars(args), "sanity_max_abs_diff_vs_mixtral": diffs, "results": results}, indent=2) + "\n")
    print(f"wrote bench/results/{name}_latest.json")


if __name__ == "__main__":
    main()

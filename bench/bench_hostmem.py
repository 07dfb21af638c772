"""CPU training steps with and without ``TrainConfig(reuse_host_memory=True)`` (glibc mallopt).

Run (from the repository root)::

    python bench/bench_hostmem.py              # 3 rounds of each case, ~4 minutes on 2 cores
    python bench/bench_hostmem.py --quick      # a smoke run (not written as latest)

The allocator setting is process-wide and cannot be undone, so every measurement is a fresh
subprocess; the two settings alternate within each round (the order flips every round) and the
figure is the median over rounds. A child builds the model and a ``Trainer`` (random tokens, no
evals, no checkpoints), trains ``--warmup`` steps, then times ``--steps`` more through
``trainer.train()`` and counts the minor page faults of those steps (``getrusage``). The cases:

- ``nano``: the nanoGPT recipe of bench_nanogpt.py (4 layers, dim 128, batch 12 x 64, vocab 256),
- ``a``: the README's Shakespeare shape of bench_train.py (dim 384, 6 layers, GQA 6/3, SwiGLU
  1536, vocab 8000, batch 16 x 128),

each in bf16 autocast (the CPU default) and fp32. Results go to
``bench/results/hostmem_latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys

from trainer_timing import machine, run_child, timed_steps, warmed_trainer, write_results

CASES = {"nano": (12, 64, 300), "a": (16, 128, 12)}  # name: batch, seq, timed steps


def model_config(case: str) -> dict:
    """The model of each case, from the script that defines it (imported here, in the child)."""
    if case == "nano":
        from bench_nanogpt import ARCHS, RECIPE_MODEL

        return dict(vocab_size=256, **RECIPE_MODEL, **ARCHS["gpt"])
    from bench_train import SHAPES

    return SHAPES["a"]


def child(case: str, precision: str, reuse: bool, warmup: int, steps: int) -> dict:
    import torch

    from transformer_toolkit.model import Transformer, TransformerConfig

    mcfg, (batch, seq, _) = model_config(case), CASES[case]
    torch.manual_seed(0)
    model = Transformer(TransformerConfig(**mcfg))
    x = torch.randint(0, mcfg["vocab_size"], (batch, seq))
    y = torch.randint(0, mcfg["vocab_size"], (batch, seq))
    with warmed_trainer(model, x, y, warmup, warmup_steps=10, precision=precision, reuse_host_memory=reuse) as trainer:
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        wall = timed_steps(trainer, steps)
        faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return {"ms_per_step": 1000 * wall / steps, "faults_per_step": faults / steps,
            "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case, precision, reuse, warmup, steps = sys.argv[2:7]
        print(json.dumps(child(case, precision, reuse == "on", int(warmup), int(steps))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--quick", action="store_true", help="1 round of a few steps (a smoke run)")
    args = ap.parse_args()
    rounds = 1 if args.quick else args.rounds
    load_before = os.getloadavg()[0]
    results = {}
    for case in CASES:
        steps = 3 if args.quick else CASES[case][2]
        for precision in ("bf16", "fp32"):
            runs = {"off": [], "on": []}
            for r in range(rounds):
                for reuse in ((False, True) if r % 2 == 0 else (True, False)):
                    runs["on" if reuse else "off"].append(
                        run_child(__file__, case, precision, "on" if reuse else "off", args.warmup, steps))
            med = {k: {m: statistics.median(run[m] for run in v) for m in v[0]} for k, v in runs.items()}
            speedup = med["off"]["ms_per_step"] / med["on"]["ms_per_step"]
            results[f"{case}_{precision}"] = {"median": med, "speedup": speedup, "runs": runs}
            print(f"{case:>4} {precision}: {med['off']['ms_per_step']:8.1f} -> {med['on']['ms_per_step']:8.1f} ms/step "
                  f"({speedup:.2f}x); page faults/step {med['off']['faults_per_step']:8.0f} -> "
                  f"{med['on']['faults_per_step']:6.0f}; max RSS {med['off']['max_rss_mb']:.0f} -> "
                  f"{med['on']['max_rss_mb']:.0f} MB", flush=True)
    env = machine(load_before, libc=os.confstr("CS_GNU_LIBC_VERSION") if hasattr(os, "confstr") else None)
    write_results("hostmem_quick.json" if args.quick else "hostmem_latest.json",
                  {"settings": vars(args), "env": env, "results": results})


if __name__ == "__main__":
    main()

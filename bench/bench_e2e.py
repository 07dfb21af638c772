"""End-to-end ``ttk train`` throughput vs the model step alone, on the same config.

Run (from the repository root)::

    python bench/bench_e2e.py                   # quickstart recipe, 60 steps a round, 2 rounds
    python bench/bench_e2e.py --steps 100 --rounds 3 --config llama-small

What a training run does besides the model step (fetching batches from the memory-mapped
token file, moving them, the NaN guard's host sync, logging, progress lines) should cost next to
nothing; this benchmark puts a number on it. Each round:

1. ``ttk train`` in a subprocess (``--train.max_steps STEPS --train.log_every 10``, fresh
   checkpoints each round; the tokenizer and token file of the first round are reused). From its
   ``metrics.jsonl``: the Trainer's own tokens/s (step time, data fetch included) and the wall-clock
   tokens/s between the records of step 10 and the last step (everything the loop does);
2. in this process, the same model config, AdamW groups and precision as the run resolved them
   (read back from its ``config.yaml``), stepping on one fixed random batch: forward,
   cross-entropy, backward, gradient clipping, optimizer step. No data loader, no logging.

The two alternate (the order flips every round) and the medians are compared: wall / model-only
near 1.0 means the loop adds no stall. Results: ``bench/results/e2e_latest.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
import yaml

from transformer_toolkit.model import Transformer, TransformerConfig
from transformer_toolkit.trainer import TrainConfig
from transformer_toolkit.trainer.optim import build_optimizer
from transformer_toolkit.trainer.precision import resolve_device, resolve_precision

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
SKIP = 10  # the first logged steps hold the warm-up (allocations, first oneDNN kernel choices)


def run_ttk(config: str, out: Path, steps: int) -> dict:
    """One ``ttk train`` run; tokens/s as the Trainer reports it and as the wall clock sees it."""
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    (out / "metrics.jsonl").unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "transformer_toolkit", "train", "--config", config, "--out", str(out),
           "--resume", "none", "--train.max_steps", str(steps), "--train.log_every", "10",
           "--train.progress", "lines"]
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"ttk train failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    process_s = time.perf_counter() - t
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in recs if r["event"] == "train"]
    first = next(r for r in train if r["step"] >= SKIP)
    last = train[-1]
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    tokens_per_step = cfg["data"]["batch_size"] * cfg["data"]["seq_len"] * cfg["train"]["grad_accum_steps"]
    wall = (last["step"] - first["step"]) * tokens_per_step / (last["time"] - first["time"])
    reported = statistics.median(r["tok_s"] for r in train if r["step"] > first["step"])
    return {"wall_tok_s": wall, "trainer_tok_s": reported, "process_s": process_s, "final_loss": last["loss"]}


class ModelStep:
    """The run's model, optimizer and precision, stepping on a fixed batch: the compute alone."""

    def __init__(self, cfg: dict):
        torch.manual_seed(0)
        self.train_cfg = TrainConfig(**{k: v for k, v in cfg["train"].items() if k not in ("ckpt_dir", "log_dir")})
        device = resolve_device(self.train_cfg.device)
        self.precision = resolve_precision(self.train_cfg, device)
        self.model = Transformer(TransformerConfig(**cfg["model"])).to(device)
        self.model.train()
        self.opt = build_optimizer(self.model, self.train_cfg)
        b, t, v = cfg["data"]["batch_size"], cfg["data"]["seq_len"], cfg["model"]["vocab_size"]
        self.x, self.y = torch.randint(0, v, (b, t), device=device), torch.randint(0, v, (b, t), device=device)
        self.accum = self.train_cfg.grad_accum_steps

    def run(self, steps: int) -> float:
        """tokens/s over ``steps`` optimizer steps."""
        t = time.perf_counter()
        for _ in range(steps):
            for _ in range(self.accum):
                with self.precision.autocast():
                    logits, aux = self.model(self.x)
                    loss = F.cross_entropy(logits.float().flatten(0, 1), self.y.flatten()) / self.accum + aux
                loss.backward()
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.train_cfg.grad_clip or math.inf)
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
        return steps * self.accum * self.x.numel() / (time.perf_counter() - t)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default="quickstart", help="recipe name or YAML (default quickstart)")
    ap.add_argument("--steps", type=int, default=60, help="training steps per ttk run (default 60)")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="run folder to reuse (tokenizer + tokens kept); default a temp dir")
    args = ap.parse_args()
    if args.steps <= SKIP + 10:
        ap.error(f"--steps must be > {SKIP + 10}: the first {SKIP} steps are warm-up")
    torch.set_num_threads(os.cpu_count())
    out = Path(args.workdir or tempfile.mkdtemp(prefix="bench_e2e_")) / "run"
    print(f"first ttk run (tokenizer and token file are made once, into {out}) ...", flush=True)
    run_ttk(args.config, out, args.steps)
    step = ModelStep(yaml.safe_load((out / "config.yaml").read_text()))
    step.run(3)  # warm-up
    print(f"precision {step.precision.name}; timing {args.rounds} alternating rounds", flush=True)
    ttk, model_only, loads = [], [], []
    for r in range(args.rounds):
        order = ("ttk", "model") if r % 2 == 0 else ("model", "ttk")
        for side in order:
            if side == "ttk":
                ttk.append(run_ttk(args.config, out, args.steps))
            else:
                model_only.append(step.run(args.steps - SKIP))
        loads.append(os.getloadavg()[0])
        print(f"  round {r + 1}: ttk wall {ttk[-1]['wall_tok_s']:.0f}, trainer {ttk[-1]['trainer_tok_s']:.0f}, "
              f"model-only {model_only[-1]:.0f} tok/s (load {loads[-1]:.2f})", flush=True)
    med = {"ttk_wall": statistics.median(r["wall_tok_s"] for r in ttk),
           "ttk_trainer": statistics.median(r["trainer_tok_s"] for r in ttk),
           "model_only": statistics.median(model_only)}
    print(f"\nmedians: ttk train wall {med['ttk_wall']:.0f} tok/s, as the Trainer reports it "
          f"{med['ttk_trainer']:.0f}, model step alone {med['model_only']:.0f}")
    print(f"wall / model-only = {med['ttk_wall'] / med['model_only']:.3f} (1.0 = the loop adds nothing); "
          f"load average {statistics.median(loads):.2f}")
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "e2e_latest.json").write_text(json.dumps({
        "date": time.strftime("%Y-%m-%d %H:%M:%S"), "command": " ".join(["bench_e2e.py", *sys.argv[1:]]),
        "torch": torch.__version__, "precision": step.precision.name, "settings": vars(args),
        "medians_tok_s": med, "wall_over_model_only": med["ttk_wall"] / med["model_only"],
        "ttk_runs": ttk, "model_only_rounds": model_only, "load_per_round": loads}, indent=2) + "\n")
    print("wrote bench/results/e2e_latest.json")


if __name__ == "__main__":
    main()

"""Run by test_distributed_grpo.py under ``torchrun``: GRPO on a tiny model, rank 0 saves the results.

    torchrun --standalone --nproc_per_node=2 dist_grpo_worker.py OUT_DIR PARALLEL

Two modes, each in OUT_DIR/MODE: ``lora`` (adapters; the KL reference is the model with them
disabled) and ``full`` (every weight trains; the reference is a frozen copy, sharded too under
FSDP2). Each runs 4 steps, then a second trainer resumes the first one's step 2 and must end at
the same weights (every rank's sampling RNG and data position restored).
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import torch
from grpo_helpers import make_trainer, small_bpe, tiny_model

from transformer_toolkit.lora import apply_lora
from transformer_toolkit.trainer import init_distributed

MODES = ("lora", "full")


def _trainer(out: Path, ckpt: str, parallel: str, mode: str, world: int):
    model = tiny_model(small_bpe().vocab_size)
    if mode == "lora":
        torch.manual_seed(1)
        apply_lora(model, r=4, alpha=8)
    return make_trainer(out / ckpt, model=model, batch_size=4 // world, grpo={"beta": 0.1, "num_iterations": 2},
                        max_steps=4, grad_accum_steps=2, save_every=2, eval_every=2, parallel=parallel,
                        ckpt_dir=str(out / ckpt))


def run(out: Path, parallel: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed()  # before the loaders, so they shard by rank
    for mode in MODES:
        (out / mode).mkdir(parents=True, exist_ok=True)
        trainer = _trainer(out / mode, "ckpt", parallel, mode, info.world_size)
        trainer.train()
        _trainer(out / mode, "ckpt2", parallel, mode, info.world_size).train(
            resume_from=str(out / mode / "ckpt" / "step_2.pt"))
        if info.is_main:
            recs = trainer.metrics.records
            train = [r for r in recs if r["event"] == "train"]
            (out / mode / "result.json").write_text(json.dumps({
                "world": info.world_size, "reference": trainer.reference,
                "losses": [r["loss"] for r in train], "rewards": [r["reward"] for r in train],
                "kls": [r["kl"] for r in train], "vals": [r["val_loss"] for r in recs if r["event"] == "eval"]}))
    if info.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    faulthandler.dump_traceback_later(200, exit=True)  # a hang fails with every thread's stack
    run(Path(sys.argv[1]), sys.argv[2])

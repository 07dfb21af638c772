"""Run by test_distributed_dpo.py under ``torchrun``: DPO on a tiny model, rank 0 saves the results.

    torchrun --standalone --nproc_per_node=2 dist_dpo_worker.py OUT_DIR PARALLEL

Two modes, one after the other, each in OUT_DIR/MODE: ``lora``: LoRA adapters, the reference is
the model with them disabled; ``full``: every weight trains, the reference is a frozen copy
(sharded too under FSDP2).
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import torch
from dpo_helpers import small_bpe, standard, tiny_model

from transformer_toolkit.dpo import DPOTrainer, PreferenceDataConfig, from_preference_samples
from transformer_toolkit.lora import apply_lora
from transformer_toolkit.trainer import TrainConfig, init_distributed

STEPS, ACCUM, GLOBAL_PAIRS = 4, 2, 4


def _trainer(out: Path, ckpt: str, parallel: str, mode: str, world: int) -> DPOTrainer:
    tok = small_bpe()
    model = tiny_model(tok.vocab_size)
    if mode == "lora":
        torch.manual_seed(1)
        apply_lora(model, r=4, alpha=8)
    cfg = PreferenceDataConfig(seq_len=48, batch_size=GLOBAL_PAIRS // world, split=0.75, seed=2)
    train_dl, val_dl = from_preference_samples(standard(40), tok, cfg)
    tc = TrainConfig(max_steps=STEPS, grad_accum_steps=ACCUM, log_every=1, eval_every=2, save_every=2, eval_iters=2,
                     warmup_steps=1, lr=1e-2, precision="fp32", parallel=parallel, ckpt_dir=str(out / ckpt),
                     plot=False, progress="none", interruptible=False, weight_decay=0.0)
    return DPOTrainer(model, train_dl, val_dl, tok.vocab_size, tc)


MODES = ("lora", "full")


def run(out: Path, parallel: str) -> None:
    torch.set_num_threads(1)
    info = init_distributed()  # before the loaders, so they shard by rank
    for mode in MODES:
        (out / mode).mkdir(parents=True, exist_ok=True)
        _run_mode(out / mode, parallel, mode, info)
    if info.enabled:
        torch.distributed.destroy_process_group()


def _run_mode(out: Path, parallel: str, mode: str, info) -> None:
    trainer = _trainer(out, "ckpt", parallel, mode, info.world_size)
    trainer.train()
    # a second run resumes the first one's step 2 and must end at its step 4
    _trainer(out, "ckpt2", parallel, mode, info.world_size).train(resume_from=str(out / "ckpt" / "step_2.pt"))
    if info.is_main:
        records = trainer.metrics.records
        losses = [r["loss"] for r in records if r["event"] == "train"]
        accs = [r["accuracy"] for r in records if r["event"] == "train"]
        vals = [r["val_loss"] for r in records if r["event"] == "eval"]
        (out / "result.json").write_text(json.dumps({"losses": losses, "accs": accs, "vals": vals,
                                                     "reference": trainer.reference, "world": info.world_size}))


if __name__ == "__main__":
    faulthandler.dump_traceback_later(150, exit=True)  # a hang fails with every thread's stack
    run(Path(sys.argv[1]), sys.argv[2])

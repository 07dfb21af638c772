"""Run by test_distributed.py under ``torchrun``: train the tiny model, rank 0 saves the results.

    torchrun --standalone --nproc_per_node=2 dist_worker.py OUT_DIR PARALLEL GLOBAL_BATCH
"""

from __future__ import annotations

import faulthandler
import json
import sys
from pathlib import Path

import torch
from trainer_helpers import VOCAB, ToyLoader, make_cfg, pattern_tokens, tiny_model

from transformer_toolkit.trainer import Trainer, init_distributed

STEPS, ACCUM = 6, 2


def run(out: Path, parallel: str, global_batch: int) -> None:
    torch.set_num_threads(1)
    info = init_distributed()  # before the loaders, so they know the rank
    if info.enabled:
        (out / f"rank{info.rank}.started").touch()
    torch.manual_seed(0)
    model = tiny_model()
    tokens = pattern_tokens()
    cut = int(len(tokens) * 0.9)
    per_rank = global_batch // info.world_size
    train_dl = ToyLoader(tokens[:cut], per_rank, seed=5, rank=info.rank, world_size=info.world_size)
    val_dl = ToyLoader(tokens[cut:], per_rank, shuffle=False, rank=info.rank, world_size=info.world_size)
    cfg = make_cfg(out, max_steps=STEPS, grad_accum_steps=ACCUM, log_every=1, eval_every=3, save_every=3,
                   parallel=parallel)
    trainer = Trainer(model, train_dl, val_dl, VOCAB, cfg)
    result = trainer.train()
    if info.is_main:
        losses = [r["loss"] for r in trainer.metrics.records if r["event"] == "train"]
        vals = [r["val_loss"] for r in trainer.metrics.records if r["event"] == "eval"]
        (out / "result.json").write_text(json.dumps({"losses": losses, "vals": vals, "result": result,
                                                     "world": info.world_size}))
    else:
        assert trainer.metrics is None  # only rank 0 logs and writes
    if info.enabled:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    from test_distributed import HANG_S

    faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang fails with every thread's stack
    run(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))

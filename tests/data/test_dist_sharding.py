"""Under a real torch.distributed process group (gloo, 2 processes) the loaders shard by rank."""

from __future__ import annotations

import json
import os

import numpy as np
import torch.distributed as dist
import torch.multiprocessing as mp

from transformer_toolkit.data import DataConfig, from_binary, save_binary


def _worker(rank: int, world: int, init_file: str, data: str, out: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        train_dl, val_dl = from_binary(data, DataConfig(seq_len=8, batch_size=4, seed=3))
        firsts = {"train": [int(x[i, 0]) for x, _ in train_dl for i in range(len(x))],
                  "val": [int(x[i, 0]) for x, _ in val_dl for i in range(len(x))],
                  "len": len(train_dl)}
        with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
            json.dump(firsts, f)
    finally:
        dist.destroy_process_group()


def test_ranks_take_disjoint_equal_shares(tmp_path):
    ids = np.arange(900) % 60000  # every window starts with a distinct id: window i starts at 8 * i
    data = str(tmp_path / "d.bin")
    save_binary(ids, data, vocab_size=60000)
    mp.spawn(_worker, args=(2, str(tmp_path / "init"), data, str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    train_starts = {8 * i for i in range((810 - 9) // 8 + 1)}  # 101 windows in the first 90% (810 tokens)
    val_starts = {810 + 8 * i for i in range((90 - 9) // 8 + 1)}  # 11 windows in the last 90 tokens
    # 101 windows -> 50 per rank -> 12 full batches of 4 on each rank, no window on both
    assert r0["len"] == r1["len"] == 12
    assert len(r0["train"]) == len(r1["train"]) == 48
    assert not set(r0["train"]) & set(r1["train"])
    assert set(r0["train"]) | set(r1["train"]) <= train_starts
    # eval keeps every window: 11 split as 6 + 6 (one repeated so both ranks do equal work)
    assert len(r0["val"]) == len(r1["val"]) == 6
    assert set(r0["val"]) | set(r1["val"]) == val_starts

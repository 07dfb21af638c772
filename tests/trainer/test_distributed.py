"""torchrun with 2 CPU processes (gloo) gives the loss curve of one process with the same
global batch: DDP (replicated) and FSDP2 (sharded), with gradient accumulation (no_sync)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_helpers import NEEDS_GLOO, torchrun

HERE = Path(__file__).resolve().parent
HANG_S = 150  # dist_worker.py dumps its stacks and exits after this long; a run takes ~5 s

pytestmark = [pytest.mark.slow, NEEDS_GLOO]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    import dist_worker

    out = tmp_path_factory.mktemp("single")
    dist_worker.run(out, "ddp", global_batch=8)
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single, parallel):
    # dist_worker.py marks each rank that got past init_distributed and dumps its stacks after
    # HANG_S: a hang in our code fails with tracebacks, one in the machine's networking is retried
    torchrun(HERE / "dist_worker.py", tmp_path, parallel, 8, timeout=HANG_S + 60, retry_unstarted=True)
    one = json.loads((single / "result.json").read_text())
    two = json.loads((tmp_path / "result.json").read_text())
    assert one["world"] == 1 and two["world"] == 2
    assert len(two["losses"]) == 6
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["vals"] == pytest.approx(one["vals"], rel=1e-5)
    assert two["losses"][-1] < two["losses"][0]
    # rank 0 wrote ordinary full checkpoints (FSDP shards gathered) that load anywhere
    a = torch.load(single / "ckpt" / "step_6.pt", weights_only=True)
    b = torch.load(tmp_path / "ckpt" / "step_6.pt", weights_only=True)
    assert b["world_size"] == 2 and len(b["rng"]) == 2 and len(b["data"]) == 2
    torch.testing.assert_close(b["model"], a["model"], rtol=1e-5, atol=1e-6)
    assert not any(type(v).__name__ == "DTensor" for v in b["model"].values())

"""torchrun with 2 CPU processes (gloo) gives the loss curve of one process with the same
global batch: DDP (replicated) and FSDP2 (sharded), with gradient accumulation (no_sync)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                       reason="needs torch.distributed with gloo"),
]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    import dist_worker

    out = tmp_path_factory.mktemp("single")
    dist_worker.run(out, "ddp", global_batch=8)
    return out


def _torchrun(out: Path, parallel: str) -> subprocess.CompletedProcess:
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dist_worker.py"), str(out), parallel, "8"]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single, parallel):
    proc = _torchrun(tmp_path, parallel)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
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

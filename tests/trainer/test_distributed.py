"""torchrun with 2 CPU processes (gloo) gives the loss curve of one process with the same
global batch: DDP (replicated) and FSDP2 (sharded), with gradient accumulation (no_sync)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
HANG_S = 150  # dist_worker.py dumps its stacks and exits after this long; a run takes ~5 s

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
    """Run dist_worker.py on 2 ranks. The worker marks each rank that got past
    ``init_distributed`` and dumps its stacks if it is still running after HANG_S, so a hang
    in our code fails with tracebacks. A hang before both ranks started (torchrun's rendezvous or
    gloo's connect, i.e. the machine's networking) is retried once on fresh ports."""
    path = os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(HERE / "dist_worker.py"), str(out), parallel, "8"]
    for attempt in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=HANG_S + 60)
            return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
            stdout, stderr = proc.communicate()
        started = sorted(p.name for p in out.glob("rank*.started"))
        if attempt == 0 and len(started) < 2:
            continue
        pytest.fail(f"torchrun did not finish in {HANG_S + 60} s (ranks started: {started}):\n"
                    f"{stdout[-3000:]}{stderr[-3000:]}")
    raise AssertionError("unreachable")


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

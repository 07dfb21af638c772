"""Running a test folder's worker script under torchrun with 2 CPU processes (gloo), shared by the
distributed tests of the trainer, DPO and GRPO (import as ``from dist_helpers import ...``)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

NEEDS_GLOO = pytest.mark.skipif(not (torch.distributed.is_available() and torch.distributed.is_gloo_available()),
                                reason="needs torch.distributed with gloo")


def torchrun(worker: Path, out: Path, *args, timeout: float, retry_unstarted: bool = False
             ) -> subprocess.CompletedProcess:
    """Run ``worker`` (a script beside its test; its folder and tests/ go on PYTHONPATH, for the
    helpers of both) on 2 ranks with the arguments ``out, *args``, one OpenMP thread per rank; a
    failed run fails the test with its output.

    A run still going after ``timeout`` seconds is killed with its workers (torchrun's process
    group, so no rank is left spinning) and fails the test with its output. With
    ``retry_unstarted``, for a worker that marks each rank that got past ``init_distributed``
    with ``out/rank<r>.started``, a run that timed out before both ranks started (torchrun's
    rendezvous or gloo's connect, i.e. the machine's networking, not our code) is tried once
    more on fresh ports."""
    path = os.pathsep.join([str(worker.parent), str(Path(__file__).parent), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=path)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", str(worker),
           str(out), *map(str, args)]
    for attempt in range(2):
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                                start_new_session=True)
        try:
            stdout, stderr = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
            return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # torchrun and its workers
            stdout, stderr = proc.communicate()
        started = sorted(p.name for p in Path(out).glob("rank*.started"))
        if retry_unstarted and attempt == 0 and len(started) < 2:
            continue
        shown = f" (ranks started: {started})" if retry_unstarted else ""
        pytest.fail(f"torchrun did not finish in {timeout} s{shown}:\n{stdout[-3000:]}{stderr[-3000:]}")
    raise AssertionError("unreachable")

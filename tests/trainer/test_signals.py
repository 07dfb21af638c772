"""interruptible=True in a real process: SIGINT/SIGTERM pause cleanly; a second signal aborts."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model

from transformer_toolkit.trainer import Trainer

HERE = Path(__file__).resolve().parent

SCRIPT = """
import json, sys, time
sys.path.insert(0, {here!r})
import torch
from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model
from transformer_toolkit.trainer import Trainer

torch.set_num_threads(1)
torch.manual_seed(0)
slow_after = int(sys.argv[1])  # micro-batches before every step becomes very slow

class Slow(Trainer):
    calls = 0
    def compute_loss(self, *a):
        Slow.calls += 1
        time.sleep(0.02 if Slow.calls <= slow_after else 60)
        return super().compute_loss(*a)

cfg = make_cfg({tmp!r}, max_steps=100000, log_every=1, eval_every=10**6, save_every=10**6, progress="lines",
               interruptible=True)
result = Slow(tiny_model(), *loaders(), VOCAB, cfg).train()
print("RESULT " + json.dumps(result), flush=True)
"""


def _start(tmp_path, slow_after: int) -> subprocess.Popen:
    script = tmp_path / "run.py"
    script.write_text(SCRIPT.format(here=str(HERE), tmp=str(tmp_path)))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, str(script), str(slow_after)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)


def _wait_for_step(proc: subprocess.Popen, timeout: float = 60) -> list[str]:
    lines, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.strip().startswith("step "):
            return lines
    proc.kill()
    raise AssertionError("the training subprocess never logged a step:\n" + "".join(lines) + proc.stderr.read())


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_first_signal_saves_pause_checkpoint_and_returns(tmp_path, sig):
    proc = _start(tmp_path, slow_after=10**9)
    _wait_for_step(proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "saving pause.pt" in out and "paused at step" in out
    result = json.loads(out.split("RESULT ", 1)[1])
    assert result["paused"] is True
    pause = torch.load(tmp_path / "ckpt" / "pause.pt", weights_only=True)
    assert pause["kind"] == "pause" and pause["step"] == result["step"] >= 1

    # resuming continues from the pause point
    torch.manual_seed(0)
    cfg = make_cfg(tmp_path, max_steps=result["step"] + 2, eval_every=10**6, save_every=10**6)
    trainer = Trainer(tiny_model(), *loaders(), VOCAB, cfg)
    assert trainer.train(resume_from="auto")["step"] == result["step"] + 2
    assert trainer.stream.state_dict()["loader"]["batch"] == pause["data"][0]["loader"]["batch"] + 2


def test_second_signal_aborts_at_once(tmp_path):
    proc = _start(tmp_path, slow_after=2)  # steps 1-2 are quick, step 3 sleeps for a minute
    _wait_for_step(proc)
    time.sleep(0.5)
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 20  # did not wait for the 60 s step
    assert proc.returncode != 0 and "aborted without saving" in err
    assert not (tmp_path / "ckpt" / "pause.pt").exists()

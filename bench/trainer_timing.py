"""Timing ``Trainer`` steps in fresh subprocesses, shared by bench_hostmem.py and bench_lora.py:
each measurement is a child process (a process-wide setting, or a peak-memory counter, starts
clean), which trains on one batch repeated forever (the data loader is not what is measured),
with no evals or checkpoints, first ``warmup`` untimed steps, then the timed ones."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class RepeatBatch:
    """The batch ``(x, y)`` forever."""

    def __init__(self, x, y):
        self.x, self.y = x, y

    def __iter__(self):
        while True:
            yield self.x, self.y

    def __len__(self):
        return 10**9


@contextmanager
def warmed_trainer(model, x, y, warmup: int, **train) -> Iterator:
    """A ``Trainer`` on ``(x, y)`` that has trained ``warmup`` steps (``train``: TrainConfig
    fields, e.g. precision), its checkpoint folder a temporary one for the block."""
    from transformer_toolkit.trainer import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(max_steps=warmup, grad_accum_steps=1, progress="none", plot=False, interruptible=False,
                          save_best=False, save_step_ckpts=False, ckpt_dir=tmp, **train)
        trainer = Trainer(model, RepeatBatch(x, y), None, model.cfg.vocab_size, cfg)
        trainer.train()
        yield trainer


def timed_steps(trainer, steps: int) -> float:
    """The seconds ``steps`` more steps of ``trainer`` take."""
    trainer.cfg.max_steps += steps
    t0 = time.perf_counter()
    trainer.train()
    return time.perf_counter() - t0


def run_child(script: str, *args) -> dict:
    """``python script --child *args``: the JSON object its last output line holds."""
    out = subprocess.run([sys.executable, script, "--child", *map(str, args)], capture_output=True, text=True)
    if out.returncode:
        raise RuntimeError(f"{' '.join(map(str, args))} failed:\n{out.stderr[-2000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine(load_before: float, **extra) -> dict:
    """The machine and its load before and now, for the results file."""
    return {"python": platform.python_version(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            **extra, "load_before": load_before, "load_after": os.getloadavg()[0],
            "date": time.strftime("%Y-%m-%d %H:%M")}


def write_results(name: str, record: dict) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / name).write_text(json.dumps(record, indent=1))
    print(f"wrote {RESULTS / name}")

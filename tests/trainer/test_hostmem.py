"""TrainConfig(reuse_host_memory=True): glibc keeps the buffers a step frees, so the next step
reuses them instead of faulting fresh pages in."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from trainer_helpers import VOCAB, ToyLoader, make_cfg, pattern_tokens, tiny_model

from transformer_toolkit.trainer import Trainer, hostmem

CHILD = """
import json, resource, sys, torch
from transformer_toolkit.trainer.hostmem import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "on" else False
def cycle():  # what a training step does to its large buffers: allocate, write, free
    t = torch.empty(16 * 2**20)  # 64 MiB
    t.fill_(1.0)
    del t
for _ in range(3):  # the first cycles settle where the buffer lives in the heap
    cycle()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    cycle()
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 5
print(json.dumps({"applied": applied, "faults": faults}))
"""


def _faults(mode: str) -> dict:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(hostmem._glibc() is None, reason="glibc only")
def test_freed_buffers_are_reused_without_page_faults():
    default, keep = _faults("off"), _faults("on")
    assert keep["applied"] is True
    pages = 64 * 2**20 // 4096
    assert default["faults"] > pages / 2  # glibc gives the 64 MiB back and faults it in again
    assert keep["faults"] < pages / 50  # kept: the same pages are reused


def test_not_applied_without_glibc(monkeypatch):
    def no_confstr(name):
        raise ValueError(f"unrecognized configuration name: {name}")

    monkeypatch.setattr(hostmem, "_applied", None)
    monkeypatch.setattr(hostmem.os, "confstr", no_confstr)
    assert hostmem.keep_freed_memory() is False
    assert hostmem._glibc() is None


@pytest.mark.parametrize("reuse", [True, False])
def test_trainer_applies_it_on_cpu_when_asked(tmp_path, monkeypatch, reuse):
    calls = []
    monkeypatch.setattr("transformer_toolkit.trainer.loop.keep_freed_memory", lambda: calls.append(1) or True)
    tokens = pattern_tokens()
    cfg = make_cfg(tmp_path, max_steps=1, device="cpu", reuse_host_memory=reuse)
    Trainer(tiny_model(), ToyLoader(tokens, 4), None, VOCAB, cfg)
    assert calls == ([1] if reuse else [])

"""DPO under torchrun with 2 CPU processes (gloo), DDP and FSDP2, with LoRA (the disabled adapters
as reference; partial checkpoints gathered from the shards) and without (a frozen copy, sharded
under FSDP2): the same losses, preference accuracies and checkpoints as one process with the
same global batch, and a run resumed from step 2 under torchrun ends at the same weights."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from dist_helpers import NEEDS_GLOO, torchrun

HERE = Path(__file__).resolve().parent

pytestmark = [pytest.mark.slow, NEEDS_GLOO]


@pytest.fixture(scope="module")
def single(tmp_path_factory):
    import dist_dpo_worker

    out = tmp_path_factory.mktemp("single")
    dist_dpo_worker.run(out, "ddp")
    return out


@pytest.mark.parametrize("parallel", ["ddp", "fsdp"])
def test_two_processes_match_one(tmp_path, single, parallel):
    torchrun(HERE / "dist_dpo_worker.py", tmp_path, parallel, timeout=300)
    for mode in ("lora", "full"):
        _check(single / mode, tmp_path / mode, mode)


def _check(single: Path, out: Path, mode: str) -> None:
    one = json.loads((single / "result.json").read_text())
    two = json.loads((out / "result.json").read_text())
    assert two["world"] == 2 and two["reference"] == one["reference"] == ("adapter" if mode == "lora" else "model")
    assert len(two["losses"]) == 4
    assert two["losses"] == pytest.approx(one["losses"], rel=1e-5)
    assert two["accs"] == pytest.approx(one["accs"], abs=1e-6)
    assert two["vals"] == pytest.approx(one["vals"], rel=1e-5)
    a = torch.load(single / "ckpt" / "step_4.pt", weights_only=True)
    b = torch.load(out / "ckpt" / "step_4.pt", weights_only=True)
    assert set(a["model"]) == set(b["model"])
    assert all(k.endswith(("lora_A", "lora_B")) for k in b["model"]) == (mode == "lora")
    # Adam divides by the gradient's scale, so a weight whose gradient is ~0 moves by up to lr per step on
    # summation-order noise alone; 5e-5 is 0.5% of one lr=1e-2 step
    torch.testing.assert_close(b["model"], a["model"], rtol=1e-4, atol=5e-5)
    assert not any(type(v).__name__ == "DTensor" for v in b["model"].values())
    resumed = torch.load(out / "ckpt2" / "step_4.pt", weights_only=True)  # step 2 resumed under torchrun
    torch.testing.assert_close(resumed["model"], b["model"], rtol=1e-5, atol=1e-6)

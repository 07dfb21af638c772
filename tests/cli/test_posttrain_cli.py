"""`ttk sft --lora.*`, `ttk dpo` and adapter exports at tiny sizes: adapter-only checkpoints that
resume, runs that load for chat with their adapters merged, DPO with LoRA (the disabled adapters
as reference) and without (`--lora.r 0`), TRL-format files, and clear errors."""

from __future__ import annotations

import io
import json

import pytest
import torch
import yaml
from cli_helpers import QUIET, run_main

from transformer_toolkit.lora import adapters
from transformer_toolkit.store import load_model

TINY = [*QUIET, "--train.eval_iters", "1", "--train.log_every", "1", "--train.warmup_steps", "1"]
SFT = ["sft", *TINY, "--data.n_samples", "120", "--data.n_eval", "2", "--train.eval_every", "3"]
DPO = ["dpo", *TINY, "--data.n_samples", "24", "--data.n_eval", "4", "--data.batch_size", "4",
       "--train.eval_every", "2", "--train.save_every", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny `ttk sft` run from scratch: the model the LoRA and DPO runs start from."""
    out = tmp_path_factory.mktemp("runs") / "sft"
    from transformer_toolkit.cli import main

    assert main([str(a) for a in [*SFT, "--out", out, "--train.max_steps", "3"]]) == 0
    return out


def test_sft_with_lora_saves_adapters_only_and_resumes(base, tmp_path, capsys):
    out = tmp_path / "lora"
    args = [*SFT, "--init", base, "--out", out, "--lora.r", "4", "--lora.targets", "attn"]
    rc, stdout, err = run_main(capsys, *args, "--train.max_steps", "2", "--train.save_every", "2")
    assert rc == 0, err
    ckpt = torch.load(out / "checkpoints" / "step_2.pt", weights_only=True)
    assert ckpt["model"] and all(k.endswith(("lora_A", "lora_B")) for k in ckpt["model"])
    assert ckpt["adapter"]["config"]["targets"] == ["attn"] and ckpt["adapter"]["base"] == str(base.resolve())
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["lora"]["r"] == 4
    step2 = (out / "checkpoints" / "step_2.pt").stat().st_mtime_ns
    rc, stdout, err = run_main(capsys, *args, "--train.max_steps", "4", "--train.save_every", "2")
    assert rc == 0, err
    assert (out / "checkpoints" / "step_4.pt").is_file()  # continued from step 2: step_2.pt not rewritten
    assert (out / "checkpoints" / "step_2.pt").stat().st_mtime_ns == step2
    assert adapters(load_model(out, merged=False)) and not adapters(load_model(out))
    rc, stdout, err = run_main(capsys, "export", "--run", out, "--format", "peft", "--out", tmp_path / "peft")
    assert rc == 0, err
    assert json.loads((tmp_path / "peft" / "adapter_config.json").read_text())["r"] == 4
    rc, stdout, err = run_main(capsys, "export", "--run", out, "--format", "lora-gguf", "--out", tmp_path / "a.gguf")
    assert rc == 0 and (tmp_path / "a.gguf").is_file(), err


def test_dpo_with_lora_then_chat(base, tmp_path, capsys, monkeypatch):
    out = tmp_path / "dpo"
    rc, stdout, err = run_main(capsys, *DPO, "--init", base, "--out", out, "--train.max_steps", "2")
    assert rc == 0, err
    assert "reference adapter" in stdout and "preference accuracy" in stdout and "exact match" in stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["dpo"]["loss"] == "sigmoid" and cfg["lora"]["r"] == 8 and cfg["init"] == str(base)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("accuracy" in r and "margin" in r for r in records if r["event"] == "train")
    monkeypatch.setattr("sys.stdin", io.StringIO("add: 1 + 2\nreverse: cat dog\n"))
    rc, stdout, err = run_main(capsys, "chat", "--run", out, "--max-new", "4")  # the base with merged adapters
    assert rc == 0, err
    assert len(stdout.splitlines()) == 2  # one reply line per piped question


def test_full_dpo_on_a_trl_file(base, tmp_path, capsys):
    samples = [{"prompt": [{"role": "user", "content": f"add: {i} + 1"}],
                "chosen": [{"role": "assistant", "content": str(i + 1)}],
                "rejected": [{"role": "assistant", "content": str(i + 2)}]} for i in range(12)]
    path = tmp_path / "prefs.jsonl"
    path.write_text("".join(json.dumps(s) + "\n" for s in samples))
    out = tmp_path / "full"
    rc, stdout, err = run_main(capsys, *DPO, "--init", base, "--out", out, "--data.corpus", path, "--lora.r", "0",
                               "--dpo.loss", "ipo", "--train.max_steps", "2")
    assert rc == 0, err
    assert "reference model" in stdout and "exact match" not in stdout
    ckpt = torch.load(out / "checkpoints" / "step_2.pt", weights_only=True)
    assert ckpt["frozen"] is None and "embed.weight" in ckpt["model"]
    assert "lora" not in yaml.safe_load((out / "config.yaml").read_text())


@pytest.mark.parametrize("argv,msg", [
    (["train", "--lora.r", "4"], "section 'lora' is for ttk sft, ttk dpo and ttk grpo, not ttk train"),
    (["sft", "--dpo.beta", "0.2"], "section 'dpo' is for ttk dpo, not ttk sft"),
    (["sft", "--lora.r", "4", "--train.max_steps", "1"], "adapters need a base model"),
    (["dpo"], "init 'runs/sft' does not exist: run `ttk sft` first"),
    (["dpo", "--init", "no/such/run"], "no run folder, checkpoint, model folder or .gguf file at 'no/such/run'"),
    (["dpo", "--init", "x", "--model.dim", "8"], "a model: section does not apply"),
    (["dpo", "--init", "x", "--dpo.loss", "kto"], "dpo: loss='kto' is not a known variant"),
    (["dpo", "--init", "x", "--lora.rank", "4"], "lora: .*unknown field"),
])
def test_errors(tmp_path, capsys, monkeypatch, argv, msg):
    monkeypatch.chdir(tmp_path)  # no runs/sft here
    rc, _, err = run_main(capsys, *argv, "--out", tmp_path / "r", *QUIET)
    assert rc == 2
    assert pytest.importorskip("re").search(msg, err), err

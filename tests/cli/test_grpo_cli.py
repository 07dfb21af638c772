"""`ttk grpo` at tiny sizes: from a `ttk sft` run, with and without LoRA, the held-out reward
before and after, a run folder that resumes and loads for chat, a prompt file, and clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from cli_helpers import QUIET, run_main

TINY = [*QUIET, "--train.eval_iters", "1", "--train.log_every", "1", "--train.warmup_steps", "1"]
SFT = ["sft", *TINY, "--data.n_samples", "120", "--data.n_eval", "2", "--train.eval_every", "3",
       "--data.tasks", "[add3, reverse_long]"]
GRPO = ["grpo", *TINY, "--data.n_samples", "16", "--data.n_eval", "4", "--data.batch_size", "2",
        "--grpo.group_size", "2", "--grpo.max_new", "6", "--train.eval_every", "2", "--train.save_every", "2"]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny `ttk sft` run on the harder tasks: the model GRPO starts from."""
    out = tmp_path_factory.mktemp("runs") / "sft-hard"
    from transformer_toolkit.cli import main

    assert main([str(a) for a in [*SFT, "--out", out, "--train.max_steps", "3"]]) == 0
    return out


@pytest.mark.parametrize("lora", [False, True])
def test_grpo_runs_reports_and_resumes(base, tmp_path, capsys, lora):
    out = tmp_path / "grpo"
    extra = ["--lora.r", "4"] if lora else []
    rc, stdout, err = run_main(capsys, *GRPO, "--init", base, "--out", out, "--train.max_steps", "2", *extra)
    assert rc == 0, err
    assert "held-out exact_match reward (greedy, 4 prompts):" in stdout and "before ->" in stdout
    cfg = yaml.safe_load((out / "config.yaml").read_text())
    assert cfg["grpo"]["group_size"] == 2 and cfg["data"]["tasks"] == ["add3", "reverse_long"]
    ckpt = torch.load(out / "checkpoints" / "step_2.pt", weights_only=True)
    assert all(k.endswith(("lora_A", "lora_B")) for k in ckpt["model"]) == lora
    if lora:
        return
    rc, stdout, err = run_main(capsys, *GRPO, "--init", base, "--out", out, "--train.max_steps", "4", *extra)
    assert rc == 0, err
    assert (out / "checkpoints" / "step_4.pt").is_file()
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["event"] == "train"] == [1, 2, 3, 4]  # resumed, not restarted
    assert all("reward" in r and "kl" in r for r in records if r["event"] == "train")
    rc, stdout, err = run_main(capsys, "generate", "--run", out, "--prompt", "add: 1 + 2", "--max-new", "3")
    assert rc == 0, err


def test_grpo_reads_a_prompt_file(base, tmp_path, capsys):
    rows = [{"prompt": f"add: {a} + {a}", "answer": str(2 * a)} for a in range(100, 112)]
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    rc, stdout, err = run_main(capsys, *GRPO, "--init", base, "--out", tmp_path / "g", "--data.corpus", path,
                               "--grpo.rewards", "[numeric_answer]", "--train.max_steps", "1")
    assert rc == 0, err
    assert "held-out numeric_answer reward" in stdout  # the 10% split of the file


def test_grpo_errors(base, tmp_path, capsys):
    rc, _, err = run_main(capsys, *GRPO, "--init", base, "--out", tmp_path / "a", "--grpo.group_size", "1")
    assert rc == 2 and "group_size >= 2" in err
    rc, _, err = run_main(capsys, *GRPO, "--init", base, "--out", tmp_path / "b", "--grpo.rewards", "[exact]")
    assert rc == 2 and "unknown reward 'exact'" in err
    rc, _, err = run_main(capsys, *GRPO, "--init", tmp_path / "nothing", "--out", tmp_path / "c")
    assert rc == 2
    rc, _, err = run_main(capsys, "sft", "--grpo.beta", "0.1")
    assert rc == 2 and "section 'grpo' is for ttk grpo" in err


def test_held_out_prompts_avoid_what_the_sft_init_trained_on(base):
    """The built-in held-out prompts skip GRPO's training prompts and the init's SFT questions,
    so before/after scores are on questions neither stage saw; a JSON init adds nothing."""
    from transformer_toolkit.cli.builtin import synthetic_split
    from transformer_toolkit.cli.grpo import _rows, _sft_questions
    from transformer_toolkit.grpo.synthetic import questions
    from transformer_toolkit.sft.synthetic import user_prompts
    from transformer_toolkit.store import runs

    multi_turn = runs.read_config(base)["data"]["multi_turn"]  # the sft recipe's
    sft_train, _ = synthetic_split(120, 2, ("add3", "reverse_long"), multi_turn=multi_turn)  # base's SFT data
    assert _sft_questions(str(base)) == user_prompts(sft_train)
    extras = {"corpus": "builtin:synthetic", "tasks": ["add3", "reverse_long"], "n_samples": 16, "n_eval": 300}
    train, held = _rows({"extras": extras, "init": str(base)})
    assert len(held) == 300 and not questions(held) & (questions(train) | user_prompts(sft_train))
    assert _sft_questions(None) == set() and _sft_questions(str(base / "missing")) == set()

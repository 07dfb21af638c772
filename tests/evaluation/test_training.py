"""Tasks scored during training: TrainConfig(eval_tasks=..., eval_tasks_every=...)."""

from __future__ import annotations

import importlib.util
import json
import random

import pytest
import torch
from eval_helpers import sentence, tiny_model, tiny_tokenizer, write_tasks

from transformer_toolkit.data import DataConfig, from_binary, save_binary
from transformer_toolkit.trainer import TrainConfig, Trainer


def _loaders(tmp_path, tok):
    rng = random.Random(0)
    save_binary(tok.encode(" ".join(sentence(rng, 12) + "." for _ in range(300))), tmp_path / "tokens.bin")
    return from_binary(tmp_path / "tokens.bin", DataConfig(seq_len=32, batch_size=4, split=0.9))


def _train(tmp_path, name, **cfg):
    tok = tiny_tokenizer()
    train_dl, val_dl = _loaders(tmp_path, tok)
    model = tiny_model(dropout=0.1)  # dropout draws from the torch RNG at every step
    config = TrainConfig(max_steps=6, eval_every=2, eval_iters=2, grad_accum_steps=1, warmup_steps=1,
                         precision="fp32", progress="none", ckpt_dir=str(tmp_path / name), save_step_ckpts=False,
                         **cfg)
    summary = Trainer(model, train_dl, val_dl, tok.vocab_size, config, tokenizer=tok).train()
    return model, summary


def test_scores_are_logged_plotted_and_written_without_moving_the_run(tmp_path):
    pytest.importorskip("matplotlib")
    tasks = [{"name": "synthetic", "n": 2, "max_new": 4}, "bpb"]
    if importlib.util.find_spec("lm_eval") is not None:  # lm-eval reseeds every RNG: the case to cover
        folder = write_tasks(tmp_path / "lm_tasks", [{"prompt": "one", "answer": "two"}])
        tasks.append({"name": "t_mc", "limit": 2, "include_path": str(folder)})
    plain, _ = _train(tmp_path, "plain")
    scored, summary = _train(tmp_path, "scored", eval_tasks=tasks, eval_tasks_every=3)
    for a, b in zip(plain.state_dict().values(), scored.state_dict().values(), strict=True):
        assert torch.equal(a, b)  # scoring restored every random state: the same training run

    run = tmp_path / "scored"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    task_records = [r for r in records if r["event"] == "tasks"]
    assert [r["step"] for r in task_records] == [3, 6]  # every 3 steps, not at every eval (2, 4, 6)
    assert {"synthetic/exact_match", "bpb/bits_per_byte"} <= set(task_records[0])
    assert summary["tasks"] == {k: v for k, v in task_records[1].items() if k not in ("event", "step", "time")}
    assert 0 < summary["tasks"]["bpb/bits_per_byte"] < 20
    assert (run / "eval" / "tasks_step_6.json").is_file() and (run / "eval" / "tasks_step_3.md").is_file()
    assert "| bpb | bits_per_byte |" in (run / "eval" / "tasks_step_6.md").read_text()
    assert (run / "loss.png").is_file()


def test_bad_task_settings_fail_before_training(tmp_path, monkeypatch):
    tok = tiny_tokenizer()
    train_dl, val_dl = _loaders(tmp_path, tok)
    with pytest.raises(ValueError, match="eval_tasks_every must be >= 1"):
        TrainConfig(eval_tasks=["bpb"], eval_tasks_every=0)
    with pytest.raises(ValueError, match="task names or dicts"):
        TrainConfig(eval_tasks=[{"limit": 2}])
    with pytest.raises(ValueError, match="needs the tokenizer"):
        Trainer(tiny_model(), train_dl, val_dl, tok.vocab_size, TrainConfig(eval_tasks=["bpb"]))
    pytest.importorskip("lm_eval")
    import lm_eval.tasks

    from transformer_toolkit.evaluation import tasks as T

    monkeypatch.setattr(T, "_lm_eval", lambda: (None, lambda **kw: lm_eval.tasks.TaskManager(
        include_path=kw.get("include_path"), include_defaults=False)))  # skip indexing lm-eval's own tasks
    folder = write_tasks(tmp_path / "lm_tasks", [{"prompt": "one", "answer": "two"}])
    cfg = TrainConfig(eval_tasks=[{"name": "t_mcc", "include_path": str(folder)}])
    with pytest.raises(ValueError, match="close: t_mc"):
        Trainer(tiny_model(), train_dl, val_dl, tok.vocab_size, cfg, tokenizer=tok)

"""Exact resume: N steps, a fresh process state, resume to 2N == 2N steps straight."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch
from trainer_helpers import VOCAB, ToyLoader, loaders, make_cfg, pattern_tokens, tiny_model

from transformer_toolkit.trainer import Trainer


def _scramble_rngs():
    # A resumed process starts with unrelated RNG states; the checkpoint must restore them.
    torch.manual_seed(12345)
    np.random.seed(12345)
    random.seed(12345)


def _plain_loader():
    tokens = pattern_tokens(1500)
    ds = [(x[i], y[i]) for x, y in ToyLoader(tokens, 4, shuffle=False) for i in range(len(x))]
    return torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True)  # order drawn from the global RNG


@pytest.mark.parametrize("loader_kind", ["stateful", "plain_dataloader"])
def test_resume_is_exact(tmp_path, loader_kind):
    """dropout > 0 (RNG), shuffled epochs crossed mid-run (data position), AdamW moments and
    accumulation: resuming step_N.pt in a brand new model/loader/trainer, with scrambled RNGs
    (a new process), ends at the same weights as the run that wrote it."""
    N = 8

    def make(run):
        torch.manual_seed(0)
        model = tiny_model(dropout=0.2)
        if loader_kind == "stateful":
            train_dl, val_dl = loaders(batch_size=8, seed=3)
        else:
            train_dl, val_dl = _plain_loader(), list(ToyLoader(pattern_tokens(400), 4, shuffle=False))
        cfg = make_cfg(tmp_path / run, max_steps=2 * N, save_every=N, eval_every=5, grad_accum_steps=3)
        return model, Trainer(model, train_dl, val_dl, VOCAB, cfg)

    straight_model, straight = make("straight")
    straight.train()
    assert straight.stream.epoch >= 1, "the run should cross an epoch boundary"

    _scramble_rngs()
    model2, trainer2 = make("resumed")
    trainer2.train(resume_from=str(tmp_path / "straight" / "ckpt" / f"step_{N}.pt"))
    torch.testing.assert_close(model2.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)
    assert trainer2.best_val_loss == straight.best_val_loss
    torch.testing.assert_close(trainer2.optimizer.state_dict()["state"], straight.optimizer.state_dict()["state"],
                               rtol=1e-5, atol=1e-6)


def test_n_then_resume_to_2n_with_step_checkpoint_of_the_straight_run(tmp_path):
    """The plain case the issue names: step_N.pt of a run, resumed in a new trainer, reaches the
    same weights as the run itself."""
    N = 6
    torch.manual_seed(0)
    model = tiny_model(dropout=0.1)
    train_dl, val_dl = loaders(seed=1)
    straight = Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=2 * N, save_every=N))
    straight.train()
    _scramble_rngs()
    model2 = tiny_model(dropout=0.1)
    train2, val2 = loaders(seed=1)
    cfg2 = make_cfg(tmp_path / "second", max_steps=2 * N, save_every=N)
    Trainer(model2, train2, val2, VOCAB, cfg2).train(resume_from=str(tmp_path / "ckpt" / f"step_{N}.pt"))
    torch.testing.assert_close(model2.state_dict(), model.state_dict(), rtol=1e-5, atol=1e-6)


def test_auto_resume_and_best_comes_from_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    cfg = make_cfg(tmp_path, max_steps=8, eval_every=2, save_every=4)
    first = Trainer(tiny_model(), train_dl, val_dl, VOCAB, cfg)
    first.train()
    # Pretend the last eval was worse than the best: resume must keep the stored best.
    ckpt = torch.load(tmp_path / "ckpt" / "step_8.pt", weights_only=True)
    ckpt["val_loss"] = ckpt["best_val_loss"] + 1.0
    torch.save(ckpt, tmp_path / "ckpt" / "step_8.pt")

    model = tiny_model()
    train_dl, val_dl = loaders()
    cfg2 = make_cfg(tmp_path, max_steps=10, eval_every=100, save_every=100)
    trainer = Trainer(model, train_dl, val_dl, VOCAB, cfg2)
    trainer.train(resume_from="auto")
    assert trainer.step == 10
    assert trainer.best_val_loss <= first.best_val_loss  # stored best, not the (worse) last eval
    assert trainer.best_val_loss <= ckpt["best_val_loss"]
    steps = [json.loads(line)["step"] for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)  # the log continues, nothing duplicated


def test_auto_without_checkpoints_starts_fresh_and_finished_runs_do_nothing(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    trainer = Trainer(tiny_model(), train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=4, eval_every=2))
    assert trainer.train(resume_from="auto")["step"] == 4
    again = Trainer(tiny_model(), *loaders(), VOCAB, make_cfg(tmp_path, max_steps=4, eval_every=2))
    assert again.train(resume_from="auto")["step"] == 4  # already done: returns at once


def test_resume_from_something_else_is_refused(tmp_path):
    torch.save({"model": tiny_model().state_dict()}, tmp_path / "weights.pt")
    trainer = Trainer(tiny_model(), *loaders(), VOCAB, make_cfg(tmp_path))
    with pytest.raises(ValueError, match="not a Trainer checkpoint"):
        trainer.train(resume_from=str(tmp_path / "weights.pt"))
    with pytest.raises(FileNotFoundError):
        trainer.train(resume_from=str(tmp_path / "nope.pt"))


def test_evals_do_not_change_the_training_run(tmp_path):
    """Evaluating (here from a shuffled val DataLoader, which draws from the RNG) must not move
    the training RNG: the same run with evals every 2 steps or never ends at the same weights."""
    weights = []
    for every in (2, 100):
        torch.manual_seed(0)
        model = tiny_model(dropout=0.2)
        train_dl, _ = loaders(seed=2)
        val = [(x[i], y[i]) for x, y in ToyLoader(pattern_tokens(600), 4) for i in range(len(x))]
        val_dl = torch.utils.data.DataLoader(val, batch_size=4, shuffle=True)
        cfg = make_cfg(tmp_path / str(every), max_steps=8, eval_every=every, save_step_ckpts=False)
        Trainer(model, train_dl, val_dl, VOCAB, cfg).train()
        weights.append(model.state_dict())
    torch.testing.assert_close(weights[0], weights[1], rtol=0, atol=0)

"""max_time: a wall-clock budget that ends a run like max_steps does, and survives a resume.

The loop's clock is replaced by one that advances one second per reading, so the step at which
the time runs out is the same on every machine however busy it is.
"""

from __future__ import annotations

import json
import types

import pytest
import torch
from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model

from transformer_toolkit.trainer import TrainConfig, Trainer, lr_at
from transformer_toolkit.trainer import loop as loop_module


@pytest.fixture
def fake_clock(monkeypatch):
    clock = {"now": 0.0}

    def perf_counter():
        clock["now"] += 1.0
        return clock["now"]

    monkeypatch.setattr(loop_module, "time", types.SimpleNamespace(perf_counter=perf_counter))
    return clock


def _trainer(tmp_path, **cfg):
    torch.manual_seed(0)
    model = tiny_model()
    train_dl, val_dl = loaders(seed=2)
    base = dict(max_steps=100, max_time=20.0, eval_every=1000, save_every=1000, warmup_steps=2)
    return model, Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, **{**base, **cfg}))


def test_time_budget_ends_the_run_with_final_eval_and_checkpoint(tmp_path, fake_clock):
    model, trainer = _trainer(tmp_path)
    summary = trainer.train()
    assert 1 < summary["step"] < 100, "the time budget, not max_steps, must end the run"
    assert summary["elapsed"] >= 20.0 and not summary["paused"]
    step = summary["step"]
    assert (tmp_path / "ckpt" / f"step_{step}.pt").is_file()  # the final checkpoint, as at max_steps
    evals = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["event"] == "eval"]
    assert [r["step"] for r in evals] == [step] and evals[0]["elapsed"] >= 20.0
    # the run is over: resuming it trains nothing
    _, again = _trainer(tmp_path)
    assert again.train(resume_from="auto")["step"] == step


def test_paused_run_resumes_its_clock_and_ends_where_the_straight_run_ends(tmp_path, fake_clock):
    straight_model, straight = _trainer(tmp_path / "straight")
    end = straight.train()["step"]

    class PauseAt3(Trainer):
        def _train_step(self, lr, stop):
            if self.step == 2:
                self.request_stop()
            return super()._train_step(lr, stop)

    torch.manual_seed(0)
    model = tiny_model()
    train_dl, val_dl = loaders(seed=2)
    cfg = make_cfg(tmp_path / "paused", max_steps=100, max_time=20.0, eval_every=1000, save_every=1000,
                   warmup_steps=2)
    first = PauseAt3(model, train_dl, val_dl, VOCAB, cfg)
    assert first.train()["paused"] and first.step == 3
    paused_elapsed = first.elapsed
    fake_clock["now"] = 1e6  # a new process: the clock reads something unrelated
    model2, resumed = _trainer(tmp_path / "paused")
    resumed.train(resume_from="auto")
    assert resumed.elapsed > paused_elapsed
    assert resumed.step == end
    torch.testing.assert_close(model2.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)


def test_cosine_follows_the_time_fraction_when_it_is_ahead():
    cfg = TrainConfig(max_steps=1000, warmup_steps=10, lr=1e-3, min_lr=1e-4, max_time=100.0)
    assert lr_at(5, cfg, elapsed=99.0) == pytest.approx(lr_at(5, cfg))  # warmup stays by steps
    assert lr_at(20, cfg, elapsed=50.0) == pytest.approx((1e-3 + 1e-4) / 2)  # half the time: half the cosine
    assert lr_at(20, cfg, elapsed=100.0) == pytest.approx(1e-4)
    assert lr_at(995, cfg, elapsed=1.0) == pytest.approx(lr_at(995, TrainConfig(**{**cfg.to_dict(),
                                                                                   "max_time": None})))
    with pytest.raises(ValueError, match="max_time must be > 0"):
        TrainConfig(max_time=0)

"""The NaN guard, and the Hub hooks with an injected uploader (no network)."""

from __future__ import annotations

import math
import threading
import time

import pytest
import torch
from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model

from transformer_toolkit.trainer import Trainer, TrainingDiverged
from transformer_toolkit.trainer.config import TrainConfig


class PoisonedModel(torch.nn.Module):
    """Wraps the tiny model; training forwards number ``poison`` return NaN logits."""

    def __init__(self, poison: set[int]):
        super().__init__()
        self.inner = tiny_model()
        self.cfg = self.inner.cfg
        self.poison, self.calls = poison, 0

    def forward(self, x):
        logits, aux = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls in self.poison:
                logits = logits * float("nan")
        return logits, aux


def test_nan_steps_are_skipped_with_a_warning(tmp_path):
    torch.manual_seed(0)
    model = PoisonedModel(poison={3, 4})
    train_dl, val_dl = loaders()
    trainer = Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=8, eval_every=2, save_every=100))
    step = trainer.optimizer.step
    applied = []

    def spy(*a, **k):
        applied.append(trainer.step)
        return step(*a, **k)

    trainer.optimizer.step = spy
    with pytest.warns(RuntimeWarning, match=r"step [34]: loss nan .* update skipped"):
        result = trainer.train()
    assert applied == [0, 1, 4, 5, 6, 7]  # steps 3 and 4 (0-based 2, 3) were not applied
    assert result["step"] == 8 and math.isfinite(result["val_loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert all(torch.isfinite(t).all() for t in best["model"].values())
    train_losses = [r["loss"] for r in trainer.metrics.records if r["event"] == "train"]
    assert all(math.isfinite(v) for v in train_losses)


def test_too_many_nan_steps_in_a_row_stop_with_a_clear_message(tmp_path):
    torch.manual_seed(0)
    model = PoisonedModel(poison=set(range(3, 100)))
    train_dl, val_dl = loaders()
    trainer = Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=50, max_bad_steps=4, eval_every=1))
    with pytest.warns(RuntimeWarning), pytest.raises(TrainingDiverged, match=r"step 6: the loss was NaN/inf for 4 "
                                                                            r"steps in a row.*Lower lr"):
        trainer.train()
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert best["step"] <= 2 and all(torch.isfinite(t).all() for t in best["model"].values())


def test_nan_weights_never_become_best(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    trainer = Trainer(tiny_model(), train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=2, eval_every=1))
    trainer.train()
    good = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    trainer.best_val_loss = math.inf  # any finite val loss would now be "best"...
    with torch.no_grad():
        trainer.model.norm.weight[0] = float("nan")  # ...but the weights are broken
    trainer.evaluate = lambda: 0.5
    with pytest.warns(RuntimeWarning, match="best.pt not written"):
        trainer._eval_and_keep_best()
    assert torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)["step"] == good["step"]


class RecordingUploader:
    def __init__(self, fail: bool = False, delay: float = 0.0):
        self.calls, self.threads, self.fail, self.delay = [], [], fail, delay

    def __call__(self, repo_id, model, cfg, tokenizer, metrics, step, private):
        time.sleep(self.delay)
        self.threads.append(threading.current_thread())
        if self.fail:
            raise ConnectionError("no network in tests")
        self.calls.append(dict(repo_id=repo_id, step=step, private=private, metrics=metrics, cfg=cfg,
                               tokenizer=tokenizer, weights={k: v.clone() for k, v in model.state_dict().items()}))


def test_hub_pushes_run_in_the_background_with_the_right_arguments(tmp_path):
    torch.manual_seed(0)
    up = RecordingUploader(delay=0.05)
    train_dl, val_dl = loaders()
    cfg = make_cfg(tmp_path, max_steps=8, eval_every=4, save_every=4, hf_repo="me/tiny", hf_private=False,
                   hf_push_every_n=True, hf_push_best=True, hf_push_end=True)
    model = tiny_model()
    Trainer(model, train_dl, val_dl, VOCAB, cfg, tokenizer="TOK", uploader=up).train()
    assert [c["step"] for c in up.calls] == [4, 4, 8, 8, 8]  # best + every_n at 4; best?, every_n, end at 8
    assert all(t is not threading.main_thread() for t in up.threads)
    call = up.calls[-1]
    assert call["repo_id"] == "me/tiny" and call["private"] is False and call["tokenizer"] == "TOK"
    assert call["cfg"] == model.cfg and "val_loss" in call["metrics"] and "perplexity" in call["metrics"]
    torch.testing.assert_close(call["weights"], model.state_dict())  # a snapshot of the final weights
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    torch.testing.assert_close(up.calls[0]["weights"], torch.load(tmp_path / "ckpt" / "step_4.pt",
                                                                  weights_only=True)["model"])
    assert best["step"] in (4, 8)


def test_failed_uploads_warn_and_training_finishes(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    cfg = make_cfg(tmp_path, max_steps=4, eval_every=2, hf_repo="me/tiny")
    up = RecordingUploader(fail=True)
    with pytest.warns(RuntimeWarning, match="hub push .* failed: ConnectionError"):
        result = Trainer(tiny_model(), train_dl, val_dl, VOCAB, cfg, uploader=up).train()
    assert result["step"] == 4 and len(up.threads) >= 2


def test_missing_hub_module_is_a_clear_error(tmp_path, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "transformer_toolkit.hf_hub", None)  # as if it could not be imported
    with pytest.raises(ImportError, match=r"hf_repo is set.*hf_repo=None"):
        Trainer(tiny_model(), [], None, VOCAB, TrainConfig(hf_repo="me/tiny", ckpt_dir=str(tmp_path)))


def test_request_stop_pauses_saves_and_pushes(tmp_path):
    torch.manual_seed(0)
    up = RecordingUploader()
    train_dl, val_dl = loaders()
    cfg = make_cfg(tmp_path, max_steps=50, eval_every=100, save_every=100, hf_repo="me/tiny", hf_push_end=False)
    trainer = Trainer(tiny_model(), train_dl, val_dl, VOCAB, cfg, uploader=up)
    step = trainer._train_step

    def stop_at_3(*a):
        out = step(*a)
        if trainer.step == 2:  # the third step is running
            trainer.request_stop()
        return out

    trainer._train_step = stop_at_3
    result = trainer.train()
    assert result == {**result, "step": 3, "paused": True}
    assert torch.load(tmp_path / "ckpt" / "pause.pt", weights_only=True)["step"] == 3
    assert [c["step"] for c in up.calls] == [3]
    trainer._train_step = step
    trainer.cfg.max_steps = 5  # continuing in memory picks up where the pause left off
    assert trainer.train()["step"] == 5


def test_tensorboard_logger(tmp_path):
    pytest.importorskip("tensorboard")
    torch.manual_seed(0)
    Trainer(tiny_model(), *loaders(), VOCAB, make_cfg(tmp_path, max_steps=3, tensorboard=True)).train()
    assert list((tmp_path / "ckpt" / "tb").glob("events.out.tfevents.*"))

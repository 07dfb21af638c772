"""Checkpoint contents, weights_only loading, atomic writes, pruning and finding the newest."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model

from transformer_toolkit.trainer import TrainConfig, Trainer, atomic_save, latest_ckpt, load_ckpt, param_groups
from transformer_toolkit.trainer import rng as rng_module

KEYS = {"format", "version", "kind", "model", "optimizer", "scaler", "step", "best_val_loss", "val_loss", "elapsed",
        "model_config", "train_config", "data_config", "rng", "data", "world_size", "torch_version", "frozen",
        "adapter", "extra"}


@pytest.fixture
def trained(tmp_path):
    torch.manual_seed(0)
    model = tiny_model(tie_weights=True, dropout=0.1)
    train_dl, val_dl = loaders()
    trainer = Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=12, eval_every=4, save_every=4))
    trainer.train()
    return trainer, tmp_path / "ckpt"


def test_files_and_contents_load_with_weights_only(trained):
    trainer, d = trained
    assert sorted(p.name for p in d.glob("*.pt")) == ["best.pt", "step_12.pt", "step_4.pt", "step_8.pt"]
    assert not list(d.glob("*.tmp"))
    for path in d.glob("*.pt"):
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        assert set(ckpt) == KEYS
        assert ckpt["model_config"] == trainer.model.cfg.to_dict()
        assert TrainConfig(**ckpt["train_config"]) == trainer.cfg
        assert isinstance(ckpt["rng"], list) and set(ckpt["rng"][0]) == {"torch", "cuda", "numpy", "python"}
        assert ckpt["data"][0]["loader"]["epoch"] >= 0 and ckpt["world_size"] == 1
    last = torch.load(d / "step_12.pt", weights_only=True)
    assert last["step"] == 12 and last["kind"] == "step"
    torch.testing.assert_close(last["model"], trainer.model.state_dict())
    assert last["best_val_loss"] == trainer.best_val_loss and last["val_loss"] == trainer.val_loss


def test_readme_loading_patterns(trained):
    trainer, d = trained
    # SFT section: torch.load with its default (weights_only=True) + plain load_state_dict, tied head
    fresh = tiny_model(tie_weights=True, dropout=0.1)
    ckpt = torch.load(d / "best.pt", map_location=torch.device("cpu"))
    fresh.load_state_dict(ckpt["model"])
    assert fresh.head.weight is fresh.embed.weight
    # Generation section: load_ckpt into a dropout-free model (dropout is not a weight)
    infer = tiny_model(tie_weights=True, dropout=0.0)
    out = load_ckpt(d / "best.pt", infer)
    assert out["kind"] == "best" and out["best_val_loss"] == trainer.best_val_loss
    torch.testing.assert_close(infer.state_dict(), fresh.state_dict())
    # with an optimizer of the same parameter groups: its state comes back too
    opt = torch.optim.AdamW(param_groups(infer, 0.1))
    load_ckpt(d / "step_12.pt", infer, opt)
    assert len(opt.state) == len(list(infer.parameters()))


def test_load_into_another_architecture_names_the_fields(trained):
    _, d = trained
    with pytest.raises(ValueError, match=r"dim: checkpoint 32 vs model 48"):
        load_ckpt(d / "best.pt", tiny_model(dim=48, tie_weights=True))
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        load_ckpt(d / "missing.pt", tiny_model())


def test_atomic_save_survives_a_crash_mid_write(tmp_path, monkeypatch):
    path = tmp_path / "best.pt"
    atomic_save({"step": 1, "w": torch.ones(3)}, path)
    real_save = torch.save

    def crash(obj, f, *a, **k):
        f.write(b"partial garbage")  # some bytes reach the temp file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(OSError, match="disk full"):
        atomic_save({"step": 2, "w": torch.zeros(3)}, path)
    monkeypatch.setattr(torch, "save", real_save)
    assert torch.load(path, weights_only=True)["step"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt"]


def test_trainer_checkpoint_crash_keeps_previous_file(trained, monkeypatch):
    trainer, d = trained
    before = (d / "step_12.pt").read_bytes()

    def crash(obj, f, *a, **k):
        raise KeyboardInterrupt  # even a hard interrupt leaves no temp file behind

    monkeypatch.setattr(torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint("step")
    assert (d / "step_12.pt").read_bytes() == before and not list(d.glob("*.tmp"))


def test_keep_last_n_prunes_old_step_checkpoints(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    cfg = make_cfg(tmp_path, max_steps=10, save_every=2, eval_every=5, keep_last_n=2)
    Trainer(tiny_model(), train_dl, val_dl, VOCAB, cfg).train()
    assert sorted(p.name for p in (tmp_path / "ckpt").glob("*.pt")) == ["best.pt", "step_10.pt", "step_8.pt"]


def test_latest_ckpt_uses_the_step_stored_inside(tmp_path, recwarn):
    d = tmp_path / "ckpt"
    assert latest_ckpt(d) is None
    for name, step in (("step_100.pt", 100), ("step_20.pt", 20), ("pause.pt", 57), ("best.pt", 999)):
        atomic_save({"step": step}, d / name)
    assert latest_ckpt(d).name == "step_100.pt"
    atomic_save({"step": 130}, d / "pause.pt")
    (d / "step_200.pt").write_bytes(b"not a checkpoint")
    assert latest_ckpt(d).name == "pause.pt"  # best.pt is never a resume point; damaged files are skipped
    assert any("unreadable" in str(w.message) for w in recwarn)


def test_rng_state_round_trip():
    import random

    import numpy as np

    state = rng_module.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    rng_module.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


def test_best_is_only_written_on_improvement_and_never_worse(tmp_path):
    torch.manual_seed(0)
    train_dl, val_dl = loaders()
    trainer = Trainer(tiny_model(), train_dl, val_dl, VOCAB, make_cfg(tmp_path, max_steps=12, eval_every=3))
    trainer.train()
    evals = [r for r in trainer.metrics.records if r["event"] == "eval"]
    best = torch.load(tmp_path / "ckpt" / "best.pt", weights_only=True)
    assert best["best_val_loss"] == min(r["val_loss"] for r in evals)
    assert best["step"] == min(evals, key=lambda r: r["val_loss"])["step"]
    assert math.isfinite(best["best_val_loss"])

"""The Trainer with LoRA: only adapters train and are checkpointed (with a fingerprint of the
frozen base), the run resumes exactly, a wrong base is refused, and a checkpoint of adapters
loads back onto its recorded base."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from trainer_helpers import VOCAB, loaders, make_cfg, tiny_model

from transformer_toolkit.lora import adapter_state_dict, adapters, apply_lora
from transformer_toolkit.model import Transformer
from transformer_toolkit.store import load, load_checkpoint_model
from transformer_toolkit.trainer import Trainer


def _adapted(base_dir=None, seed=0, **lora):
    torch.manual_seed(0)
    model = tiny_model(dropout=0.1)  # the base: the same weights every time
    torch.manual_seed(seed)  # adapters drawn from another stream: a resumed run must not depend on it
    return apply_lora(model, r=4, alpha=8, dropout=0.1, base=base_dir, **lora)


def _trainer(model, tmp_path, run, **cfg):
    train_dl, val_dl = loaders(batch_size=8, seed=3)
    return Trainer(model, train_dl, val_dl, VOCAB, make_cfg(tmp_path / run, **cfg))


def test_only_adapters_train_and_are_saved(tmp_path):
    model = _adapted()
    base = {k: v.clone() for k, v in model.state_dict().items() if "lora_" not in k}
    trainer = _trainer(model, tmp_path, "run", max_steps=12, lr=1e-2)
    trainer.train()
    losses = [r["loss"] for r in trainer.metrics.records if r["event"] == "train"]
    assert losses[-1] < losses[0]
    for k, v in base.items():
        assert torch.equal(model.state_dict()[k], v), f"{k} changed"
    n_adapter = sum(v.numel() for v in adapter_state_dict(model).values())
    assert sum(p.numel() for g in trainer.optimizer.param_groups for p in g["params"]) == n_adapter
    ckpt = torch.load(tmp_path / "run" / "ckpt" / "step_12.pt", weights_only=True)
    assert set(ckpt["model"]) == set(adapter_state_dict(model))
    assert ckpt["adapter"]["type"] == "lora" and ckpt["adapter"]["config"]["r"] == 4
    assert ckpt["frozen"].shape == (len([p for p in model.parameters() if not p.requires_grad]), 2)
    with pytest.raises(ValueError, match=r"trainable parameters only.*store.load\(path\)"):
        load_checkpoint_model(tmp_path / "run" / "ckpt" / "step_12.pt")  # the full-model reader alone
    with pytest.raises(ValueError, match="no record of its base model"):  # apply_lora was given no base=
        Transformer.from_checkpoint(tmp_path / "run" / "ckpt" / "step_12.pt")


def test_lora_run_resumes_exactly(tmp_path):
    N = 6
    straight_model = _adapted()
    straight = _trainer(straight_model, tmp_path, "straight", max_steps=2 * N, save_every=N, grad_accum_steps=2)
    straight.train()
    torch.manual_seed(999)
    np.random.seed(999)
    random.seed(999)
    resumed_model = _adapted(seed=7)  # other fresh adapters: the checkpoint's replace them
    resumed = _trainer(resumed_model, tmp_path, "resumed", max_steps=2 * N, save_every=N, grad_accum_steps=2)
    resumed.train(resume_from=str(tmp_path / "straight" / "ckpt" / f"step_{N}.pt"))
    torch.testing.assert_close(resumed_model.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)


def test_resume_refuses_another_base_or_a_full_model(tmp_path):
    _trainer(_adapted(), tmp_path, "run", max_steps=3, save_every=3).train()
    ckpt = str(tmp_path / "run" / "ckpt" / "step_3.pt")
    other = apply_lora(tiny_model(), r=4, alpha=8)  # another random base
    with pytest.raises(ValueError, match="other frozen \\(base\\) weights"):
        _trainer(other, tmp_path, "b", max_steps=6).train(resume_from=ckpt)
    with pytest.raises(ValueError, match="other trainable parameters"):
        _trainer(_adapted(targets=["attn"]), tmp_path, "c", max_steps=6).train(resume_from=ckpt)
    with pytest.raises(ValueError, match="every parameter of this model trains"):
        _trainer(tiny_model(), tmp_path, "d", max_steps=6).train(resume_from=ckpt)
    _trainer(tiny_model(), tmp_path, "full", max_steps=3, save_every=3).train()
    with pytest.raises(ValueError, match="holds a full model"):
        full = str(tmp_path / "full" / "ckpt" / "step_3.pt")
        _trainer(_adapted(), tmp_path, "e", max_steps=6).train(resume_from=full)


def test_checkpoint_loads_onto_its_recorded_base(tmp_path):
    torch.manual_seed(0)
    tiny_model().save_pretrained(tmp_path / "base")  # the base as a pretrained folder
    model = _adapted(base_dir=str(tmp_path / "base"))
    _trainer(model, tmp_path, "run", max_steps=4, save_every=4, lr=1e-2).train()
    x = torch.randint(0, VOCAB, (2, 10))
    model.eval()
    with torch.no_grad():
        want = model(x)[0]
    # through store.load: best.pt of the run's checkpoint folder, its base read from the recorded folder
    kept = load(tmp_path / "run" / "ckpt", tokenizer=False, merged=False).model
    merged = Transformer.from_checkpoint(tmp_path / "run" / "ckpt" / "step_4.pt")  # merged, the default
    assert adapters(kept) and not adapters(merged) and not kept.training and not merged.training
    assert not any("lora_" in k for k in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(kept(x)[0], want, rtol=0, atol=1e-5)
        torch.testing.assert_close(merged(x)[0], want, rtol=0, atol=1e-5)
    torch.manual_seed(5)
    with pytest.raises(ValueError, match="other base weights"):
        load(tmp_path / "run" / "ckpt" / "step_4.pt", tokenizer=False, base=tiny_model())
    (tmp_path / "base").rename(tmp_path / "moved")  # the recorded base is gone
    with pytest.raises(FileNotFoundError, match="no longer exists; pass base="):
        load(tmp_path / "run" / "ckpt" / "step_4.pt", tokenizer=False)


def test_hub_push_gets_the_merged_model(tmp_path):
    pushed = []
    model = _adapted()
    train_dl, val_dl = loaders(batch_size=8, seed=3)
    cfg = make_cfg(tmp_path / "run", max_steps=2, hf_repo="me/m", hf_push_best=False)
    Trainer(model, train_dl, val_dl, VOCAB, cfg, uploader=lambda **kw: pushed.append(kw["model"])).train()
    assert len(pushed) == 1
    snap = pushed[0]
    assert not any("lora_" in k for k in snap.state_dict())
    x = torch.randint(0, VOCAB, (1, 8))
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(snap(x)[0], model(x)[0], rtol=0, atol=1e-5)

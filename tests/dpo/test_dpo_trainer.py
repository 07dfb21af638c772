"""DPOTrainer on the one Trainer loop: it learns the preference (accuracy and margin rise, in
metrics.jsonl and TensorBoard), every reference kind gives the starting model's log-probs (a
frozen copy, the LoRA-disabled model without a copy, a precomputed table kept in checkpoints),
runs resume exactly and a pause (Ctrl+C's mechanism) resumes to the same weights."""

from __future__ import annotations

import json

import pytest
import torch
from dpo_helpers import conversational, small_bpe, standard, tiny_model

from transformer_toolkit.dpo import DPOConfig, DPOTrainer, PreferenceDataConfig, from_preference_samples
from transformer_toolkit.dpo.loss import sequence_logps
from transformer_toolkit.lora import adapters, apply_lora
from transformer_toolkit.trainer import TrainConfig
from transformer_toolkit.trainer.batches import unpack


def _loaders(n=24, conv=False, seed=0):
    samples = conversational(n, seed) if conv else standard(n, seed)
    cfg = PreferenceDataConfig(seq_len=48 if not conv else 96, batch_size=4, split=0.75, seed=1)
    return from_preference_samples(samples, small_bpe(), cfg)


def _cfg(tmp_path, **kw):
    base = dict(max_steps=12, eval_every=6, save_every=6, log_every=2, warmup_steps=2, lr=3e-3, min_lr=3e-4,
                grad_accum_steps=1, precision="fp32", eval_iters=2, ckpt_dir=str(tmp_path / "ckpt"), plot=False,
                progress="none", interruptible=False, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def _trainer(tmp_path, model=None, dpo=None, conv=False, **kw):
    train_dl, val_dl = _loaders(conv=conv)
    model = model if model is not None else tiny_model(small_bpe().vocab_size)
    return DPOTrainer(model, train_dl, val_dl, small_bpe().vocab_size, _cfg(tmp_path, **kw), dpo=dpo or {})


def _base_logps(model, batch):
    model.eval()
    with torch.no_grad():
        return sequence_logps(model(batch.x)[0], batch.y, batch.loss_mask)[0]


@pytest.mark.parametrize("loss", ["sigmoid", "ipo", "hinge", "simpo"])
def test_dpo_learns_the_preference(tmp_path, loss):
    trainer = _trainer(tmp_path, dpo={"loss": loss, "beta": 0.5 if loss != "simpo" else 2.0}, max_steps=30,
                       lr=1e-2, log_every=5, tensorboard=loss == "sigmoid")
    summary = trainer.train()
    train = [r for r in trainer.metrics.records if r["event"] == "train"]
    evals = [r for r in trainer.metrics.records if r["event"] == "eval"]
    assert {"chosen_reward", "rejected_reward", "margin", "accuracy"} <= set(train[0])
    assert train[-1]["loss"] < train[0]["loss"]
    assert train[-1]["accuracy"] > 0.9 and train[-1]["margin"] > train[0]["margin"]
    assert evals[-1]["accuracy"] > 0.9 and "ppl" not in evals[-1]
    assert summary["step"] == 30
    if loss == "sigmoid":  # the statistics reach TensorBoard too
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path / "ckpt" / "tb"))
        acc.Reload()
        assert {"train/accuracy", "train/margin", "eval/accuracy"} <= set(acc.Tags()["scalars"])


def test_progress_line_shows_accuracy_and_margin(tmp_path, capsys):
    _trainer(tmp_path, max_steps=2, log_every=1, progress="lines").train()
    out = capsys.readouterr().out
    assert "accuracy" in out and "margin" in out and "ppl" not in out


def test_every_reference_is_the_starting_model(tmp_path):
    """At step 0 the frozen copy, the LoRA-disabled model and the precomputed table all give the
    starting model's log-probs; with LoRA no copy of the model is made."""
    train_dl, _ = _loaders()
    batch = unpack(train_dl.dataset.__getitems__(range(4)))
    start = tiny_model(small_bpe().vocab_size)
    want = _base_logps(start, batch)

    copy_ref = _trainer(tmp_path / "a", model=tiny_model(small_bpe().vocab_size))
    assert copy_ref.reference == "model" and copy_ref.ref_model is not None
    torch.testing.assert_close(copy_ref.reference_logps(batch), want)

    lora = apply_lora(tiny_model(small_bpe().vocab_size), r=4)
    with torch.no_grad():
        for a in adapters(lora):
            a.lora_B.normal_()  # a trained adapter: the reference must still be the base
    adapter_ref = _trainer(tmp_path / "b", model=lora)
    assert adapter_ref.reference == "adapter" and adapter_ref.ref_model is None
    torch.testing.assert_close(adapter_ref.reference_logps(batch), want)
    assert all(a.active for a in adapters(lora))  # re-enabled after the reference forward

    pre = _trainer(tmp_path / "c", dpo={"reference": "precomputed"})
    torch.testing.assert_close(pre.reference_logps(batch), want, rtol=0, atol=1e-5)
    table = pre._ref_table
    assert table.shape == (24, 2) and torch.isfinite(table).all()


def _straight_and_resumed(tmp_path, make, N=4):
    straight_model, straight = make(tmp_path / "s")
    straight.train()
    torch.manual_seed(123)
    resumed_model, resumed = make(tmp_path / "r")
    resumed.train(resume_from=str(tmp_path / "s" / "ckpt" / f"step_{N}.pt"))
    torch.testing.assert_close(resumed_model.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)
    return straight, resumed


@pytest.mark.parametrize("reference", ["model", "adapter", "precomputed"])
def test_dpo_resumes_exactly(tmp_path, reference):
    def make(path):
        model = tiny_model(small_bpe().vocab_size, dropout=0.1)
        if reference == "adapter":
            torch.manual_seed(5)
            apply_lora(model, r=4, dropout=0.1)
        return model, _trainer(path, model=model, dpo={"reference": reference}, max_steps=8, save_every=4,
                               grad_accum_steps=2)

    straight, resumed = _straight_and_resumed(tmp_path, make)
    ckpt = torch.load(tmp_path / "s" / "ckpt" / "step_4.pt", weights_only=True)
    if reference == "precomputed":  # the table of the starting weights travels in the checkpoint
        torch.testing.assert_close(ckpt["extra"]["ref_logps"], straight._ref_table)
        torch.testing.assert_close(resumed._ref_table, straight._ref_table)
    if reference == "adapter":
        assert all("lora_" in k for k in ckpt["model"])


@pytest.mark.parametrize("lora", [False, True])
def test_pause_then_resume_equals_straight_run(tmp_path, lora):
    """request_stop (what a first Ctrl+C does) finishes the step, writes pause.pt and returns;
    train(resume_from="auto") goes on to the straight run's weights (the full model with a
    frozen copy as reference, or LoRA adapters with the adapters off as reference)."""
    def model_at(seed=0):
        model = tiny_model(small_bpe().vocab_size, seed=seed)
        if lora:
            torch.manual_seed(5)
            apply_lora(model, r=4)
        return model

    straight_model = model_at()
    _trainer(tmp_path / "s", model=straight_model, max_steps=8).train()
    model = model_at()
    trainer = _trainer(tmp_path / "p", model=model, max_steps=8)
    real = trainer.compute_loss

    def stop_at_3(m, batch):
        if trainer.step == 3 and m.training:
            trainer.request_stop()
        return real(m, batch)

    trainer.compute_loss = stop_at_3
    assert trainer.train()["paused"] and trainer.step == 4
    assert (tmp_path / "p" / "ckpt" / "pause.pt").is_file()
    other = _trainer(tmp_path / "p", model=model_at(seed=9), max_steps=8)
    # the reference must be the starting weights, not another model's
    msg = r"other frozen \(base\) weights" if lora else "reference model differs from the one this run started with"
    with pytest.raises(ValueError, match=msg):
        other.train(resume_from="auto")
    model2 = model_at()  # the starting weights again (as `ttk dpo` reloads its init)
    again = _trainer(tmp_path / "p", model=model2, max_steps=8)
    assert not again.train(resume_from="auto")["paused"]
    torch.testing.assert_close(model2.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)


def test_data_reference_logps_are_used(tmp_path):
    samples = standard(8)
    for s in samples:
        s["ref_chosen_logps"], s["ref_rejected_logps"] = -3.0, -5.0
    train_dl, _ = from_preference_samples(samples, small_bpe(), PreferenceDataConfig(seq_len=48, batch_size=4,
                                                                                     split=1.0))
    trainer = DPOTrainer(tiny_model(small_bpe().vocab_size), train_dl, None, small_bpe().vocab_size, _cfg(tmp_path))
    assert trainer.reference == "precomputed" and trainer.ref_model is None
    batch = unpack(next(iter(train_dl)))
    assert trainer.reference_logps(batch).tolist() == [-3.0] * 4 + [-5.0] * 4


def test_conversational_dpo_runs_and_bad_setups_fail(tmp_path):
    _trainer(tmp_path / "conv", conv=True, max_steps=2).train()
    with pytest.raises(ValueError, match="reference='adapter' needs a model with LoRA"):
        _trainer(tmp_path / "x", dpo={"reference": "adapter"})
    with pytest.raises(ValueError, match="loss='simpo' uses no reference"):
        DPOConfig(loss="simpo", reference="model")
    with pytest.raises(ValueError, match="loss='sigmoid' needs a reference"):
        DPOConfig(reference="none")


def test_sft_batches_are_refused(tmp_path):
    train_dl, _ = _loaders()
    x = torch.zeros(3, 8, dtype=torch.long)
    trainer = DPOTrainer(tiny_model(small_bpe().vocab_size), train_dl, None, small_bpe().vocab_size, _cfg(tmp_path))
    with pytest.raises(ValueError, match="needs preference batches"):
        trainer.count_tokens(unpack((x, x, torch.ones(3, 8))))
    assert json.dumps(trainer.dpo.to_dict())

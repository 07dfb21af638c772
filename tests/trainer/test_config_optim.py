"""TrainConfig validation, the lr schedule, AdamW parameter groups and precision choice."""

from __future__ import annotations

import math

import pytest
import torch
from trainer_helpers import tiny_model

from transformer_toolkit.trainer import TrainConfig, lr_at, param_groups, resolve_precision
from transformer_toolkit.trainer.precision import Precision, cpu_has_native_bf16


def test_readme_train_config_block_is_accepted():
    cfg = TrainConfig(
        max_steps=10000, eval_every=500, save_every=1000, log_every=50, interruptible=True,
        lr=3e-4, min_lr=3e-5, weight_decay=0.1, beta1=0.9, beta2=0.95, grad_clip=1.0,
        warmup_steps=200, grad_accum_steps=4, mixed_precision=True, grad_checkpoint=False,
        ckpt_dir="checkpoints", save_best=True, save_step_ckpts=True,
        hf_repo="username/my-model", hf_private=True, hf_push_best=True, hf_push_every_n=False,
        hf_push_end=True, hf_push_on_pause=True,
    )
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg
    assert TrainConfig.from_json(cfg.to_json()) == cfg
    assert TrainConfig().hf_repo is None and TrainConfig().device == "auto"


def test_unknown_field_is_rejected_with_a_suggestion():
    with pytest.raises(ValueError, match=r"save_every_n.*did you mean 'save_every'"):
        TrainConfig(save_every_n=100)


@pytest.mark.parametrize("bad, field", [
    (dict(max_steps=0), "max_steps"), (dict(min_lr=1.0, lr=1e-3), "min_lr"), (dict(precision="fp8"), "precision"),
    (dict(beta2=1.0), "beta2"), (dict(keep_last_n=0), "keep_last_n"), (dict(hf_repo="no-slash"), "hf_repo"),
    (dict(eval_iters=0), "eval_iters"), (dict(parallel="tp"), "parallel"), (dict(hf_push_every_n=0), "hf_push_every_n"),
])
def test_invalid_values_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**bad)


def test_hub_push_interval():
    assert TrainConfig(hf_push_every_n=False).hub_push_interval is None
    assert TrainConfig(hf_push_every_n=True, save_every=250).hub_push_interval == 250
    assert TrainConfig(hf_push_every_n=40).hub_push_interval == 40


def test_schedule_warmup_then_cosine_to_min_lr():
    cfg = TrainConfig(max_steps=1000, warmup_steps=100, lr=1e-3, min_lr=1e-4)
    assert lr_at(0, cfg) == pytest.approx(1e-5)  # first step: lr / warmup
    assert lr_at(49, cfg) == pytest.approx(5e-4)
    assert lr_at(99, cfg) == pytest.approx(1e-3)  # warmup ends at the peak
    assert lr_at(549, cfg) == pytest.approx((1e-3 + 1e-4) / 2)  # half way through the cosine
    assert lr_at(999, cfg) == pytest.approx(1e-4)  # the last step is exactly at min_lr
    assert lr_at(5000, cfg) == pytest.approx(1e-4)  # an extended run stays at the floor
    lrs = [lr_at(s, cfg) for s in range(1000)]
    assert all(a <= b for a, b in zip(lrs[:100], lrs[1:100], strict=False))
    assert all(a >= b for a, b in zip(lrs[99:], lrs[100:], strict=False))


def test_schedule_readme_numbers_and_no_warmup():
    cfg = TrainConfig(max_steps=3000, warmup_steps=200, lr=3e-4)
    assert lr_at(99, cfg) == pytest.approx(1.5e-4)  # "step 100 ... lr 1.5e-04" in the README
    assert lr_at(199, cfg) == pytest.approx(3e-4)
    no_warm = TrainConfig(max_steps=10, warmup_steps=0, lr=1e-3, min_lr=0.0)
    assert lr_at(0, no_warm) == pytest.approx(0.5e-3 * (1 + math.cos(math.pi / 10)))
    all_warm = TrainConfig(max_steps=10, warmup_steps=20, lr=1e-3)
    assert lr_at(9, all_warm) == pytest.approx(0.5e-3)


@pytest.mark.parametrize("tie", [True, False])
def test_weight_decay_only_on_matrices(tie):
    model = tiny_model(tie_weights=tie, norm="layernorm", bias=True)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() >= 2 for p in decay["params"]) and all(p.dim() == 1 for p in no_decay["params"])
    ids = [id(p) for p in decay["params"] + no_decay["params"]]
    assert len(ids) == len(set(ids)) == len(list(model.parameters()))  # a tied weight appears once
    assert any(p is model.embed.weight for p in decay["params"])
    assert len(no_decay["params"]) > 0  # norm scales and biases


def test_precision_choice_on_cpu():
    cpu = torch.device("cpu")
    assert resolve_precision(TrainConfig(mixed_precision=False), cpu).name == "fp32"
    auto = resolve_precision(TrainConfig(mixed_precision=True), cpu).name
    assert auto == ("bf16" if cpu_has_native_bf16() else "fp32")
    for name in ("fp32", "bf16", "fp16"):  # an explicit choice wins over mixed_precision
        assert resolve_precision(TrainConfig(mixed_precision=False, precision=name), cpu).name == name
    assert Precision("fp16", cpu).needs_scaler and not Precision("bf16", cpu).needs_scaler
    assert Precision("fp32", cpu).make_scaler() is None

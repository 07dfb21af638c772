"""GRPOTrainer on the one Trainer loop: the reward rises, every statistic reaches metrics.jsonl,
TensorBoard and the plot, runs resume exactly (sampling RNG and kept rollouts included) and
pause, LoRA trains only adapters, and bad input fails with the fix named."""

from __future__ import annotations

import json

import pytest
import torch
from grpo_helpers import loaders, make_trainer, rows, share_of_e, small_bpe, tiny_model

from transformer_toolkit.grpo import GRPOConfig, GRPOTrainer, PromptDataConfig, from_prompt_samples
from transformer_toolkit.lora import apply_lora

STATS = ("reward", "reward_std", "zero_std", "completion_length", "kl", "clip_ratio", "rewards/share_of_e")


def _train_records(trainer):
    return [r for r in trainer.metrics.records if r["event"] == "train"]


def test_reward_rises_and_stats_are_logged(tmp_path):
    trainer = make_trainer(tmp_path, grpo={"group_size": 8}, max_steps=16, eval_every=8, save_every=8,
                           tensorboard=True, plot=True)
    trainer.train()
    recs = _train_records(trainer)
    assert len(recs) == 16 and all(k in r for r in recs for k in STATS)
    first = sum(r["reward"] for r in recs[:4]) / 4
    last = sum(r["reward"] for r in recs[-4:]) / 4
    assert last > first + 0.05, (first, last)
    assert all(0 <= r["zero_std"] <= 1 and 1 <= r["completion_length"] <= 8 for r in recs)
    assert all(r["kl"] == 0 for r in recs)  # beta = 0: no reference
    evals = [r for r in trainer.metrics.records if r["event"] == "eval"]
    assert evals and all(r["val_loss"] == pytest.approx(-r["reward"]) for r in evals)
    lines = [json.loads(line) for line in (tmp_path / "ckpt" / "metrics.jsonl").read_text().splitlines()]
    assert [r["reward"] for r in lines if r["event"] == "train"] == [r["reward"] for r in recs]
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tmp_path / "ckpt" / "tb"))
    acc.Reload()
    assert {"train/reward", "train/kl", "train/clip_ratio", "eval/reward"} <= set(acc.Tags()["scalars"])
    assert (tmp_path / "ckpt" / "loss.png").is_file()


@pytest.mark.parametrize("loss_type", ["grpo", "dr_grpo"])
def test_loss_types_and_kl_run(tmp_path, loss_type):
    trainer = make_trainer(tmp_path, grpo={"loss_type": loss_type, "beta": 0.1, "num_iterations": 2}, max_steps=4)
    trainer.train()
    recs = _train_records(trainer)
    assert trainer.reference == "model" and trainer.ref_model is not None
    assert recs[0]["kl"] == pytest.approx(0.0, abs=1e-7)  # the first step's policy is the reference
    assert recs[-1]["kl"] > 0  # then it moves away
    assert any(r["clip_ratio"] > 0 for r in recs[1::2])  # the second step on a rollout can clip


def _straight_and_resumed(tmp_path, make, n, final):
    straight_model, straight = make(tmp_path / "s")
    straight.train()
    torch.manual_seed(123)  # the resumed run must take its RNG from the checkpoint
    resumed_model, resumed = make(tmp_path / "r")
    resumed.train(resume_from=str(tmp_path / "s" / "ckpt" / f"step_{n}.pt"))
    torch.testing.assert_close(resumed_model.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)
    return straight, resumed


@pytest.mark.parametrize("iterations", [1, 2])
def test_resume_is_exact(tmp_path, iterations):
    """Straight 6 steps == 3 steps, a new process-like trainer resumed from step 3, 3 more. With
    num_iterations=2 step 3 falls inside a rollout's two steps: the kept rollouts travel too."""
    def make(path):
        model = tiny_model(small_bpe().vocab_size, dropout=0.1)
        return model, make_trainer(path, model=model, grpo={"num_iterations": iterations, "beta": 0.05},
                                   grad_accum_steps=2, max_steps=6, save_every=3)

    straight, resumed = _straight_and_resumed(tmp_path, make, 3, 6)
    ckpt = torch.load(tmp_path / "s" / "ckpt" / "step_3.pt", weights_only=True)
    kept = ckpt["data"][0]["rollouts"]["kept"]
    assert len(kept) == (2 if iterations == 2 else 0)
    a = [r["reward"] for r in _train_records(straight) if r["step"] > 3]
    b = [r["reward"] for r in _train_records(resumed)]
    assert len(b) == 3 and a == pytest.approx(b)  # the same rollouts were sampled


def test_pause_then_resume_equals_straight_run(tmp_path):
    straight_model = tiny_model(small_bpe().vocab_size)
    make_trainer(tmp_path / "s", model=straight_model, max_steps=6).train()
    model = tiny_model(small_bpe().vocab_size)
    trainer = make_trainer(tmp_path / "p", model=model, max_steps=6)
    real = trainer.compute_loss

    def stop_at_2(m, batch):
        if trainer.step == 2 and m.training:
            trainer.request_stop()  # what a first Ctrl+C does
        return real(m, batch)

    trainer.compute_loss = stop_at_2
    assert trainer.train()["paused"] and trainer.step == 3
    again_model = tiny_model(small_bpe().vocab_size)
    assert not make_trainer(tmp_path / "p", model=again_model, max_steps=6).train(resume_from="auto")["paused"]
    torch.testing.assert_close(again_model.state_dict(), straight_model.state_dict(), rtol=1e-5, atol=1e-6)


def test_lora_trains_adapters_with_the_adapter_reference(tmp_path):
    model = tiny_model(small_bpe().vocab_size)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    apply_lora(model, r=4, alpha=8)
    trainer = make_trainer(tmp_path, model=model, grpo={"beta": 0.1}, max_steps=4, save_every=4)
    trainer.train()
    assert trainer.reference == "adapter" and trainer.ref_model is None  # no copy of the model
    ckpt = torch.load(tmp_path / "ckpt" / "step_4.pt", weights_only=True)
    assert ckpt["model"] and all("lora_" in k for k in ckpt["model"])
    now = model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in base.items() if k in now)  # frozen base weights unchanged
    assert _train_records(trainer)[-1]["kl"] > 0


def test_bad_rewards_fail_and_keep_the_checkpoints(tmp_path):
    calls = {"n": 0}

    def flaky(prompts, completions, **kw):
        calls["n"] += 1
        if calls["n"] > 2:
            raise ZeroDivisionError("division by zero")
        return [0.5] * len(completions)

    trainer = make_trainer(tmp_path, reward_funcs=(flaky,), max_steps=6, save_every=2, eval_every=100)
    with pytest.raises(RuntimeError, match="reward function 'flaky' raised ZeroDivisionError"):
        trainer.train()
    ckpt = torch.load(tmp_path / "ckpt" / "step_2.pt", weights_only=True)  # saved before the failure, intact
    assert ckpt["step"] == 2

    def short(prompts, completions, **kw):
        return [1.0]

    with pytest.raises(ValueError, match="returned 1 values for 16 completions"):
        make_trainer(tmp_path / "b", reward_funcs=(short,), max_steps=1).train()


def test_bad_setups_fail_with_the_fix(tmp_path):
    no_answer = [{"prompt": r["prompt"]} for r in rows(8)]
    train_dl, _ = from_prompt_samples(no_answer, small_bpe(), PromptDataConfig(batch_size=4, split=1.0))
    with pytest.raises(ValueError, match="reward 'exact_match' needs the column answer"):
        GRPOTrainer(tiny_model(small_bpe().vocab_size), train_dl, None, small_bpe().vocab_size,
                    tokenizer=small_bpe(), grpo=GRPOConfig())
    with pytest.raises(ValueError, match="group_size >= 2"):
        make_trainer(tmp_path, grpo={"group_size": 1})
    train_dl, val_dl = loaders()
    with pytest.raises(ValueError, match="exceed the model's max_seq"):
        make_trainer(tmp_path, grpo={"max_new": 60})
    with pytest.raises(ValueError, match="needs the tokenizer"):
        GRPOTrainer(tiny_model(small_bpe().vocab_size), train_dl, val_dl, small_bpe().vocab_size,
                    grpo=GRPOConfig(), reward_funcs=[share_of_e])


def test_rollouts_see_every_steps_weights(tmp_path):
    """Fused AdamW updates the weights without bumping their version counters; the Trainer bumps
    them, so decoding's cached weight layouts (used for <= 8 rows on CPU) are rebuilt after each
    step. Rollouts of 2 prompts x 4 here: greedy samples of the trained model equal a fresh copy's."""
    from transformer_toolkit.inference import SamplingParams
    from transformer_toolkit.inference.groups import sample_groups
    from transformer_toolkit.model.fast_decode import weights_stamp

    model = tiny_model(small_bpe().vocab_size)
    trainer = make_trainer(tmp_path, model=model, batch_size=2, max_steps=3, lr=5e-2)
    before = weights_stamp(model)
    trainer.train()
    assert weights_stamp(model) != before
    fresh = tiny_model(small_bpe().vocab_size)
    fresh.load_state_dict(model.state_dict())
    ids = trainer.train_dl.dataset.ids[:2]
    greedy = SamplingParams(0.0)
    a = sample_groups(model, ids, 4, 8, greedy, trainer.stop_ids).tokens
    b = sample_groups(fresh, ids, 4, 8, greedy, trainer.stop_ids).tokens
    assert torch.equal(a, b)

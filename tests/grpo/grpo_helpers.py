"""Shared pieces of the GRPO tests: a small BPE tokenizer, a tiny model, prompt rows and a dense
reward (the share of the letter e in the completion: random completions differ in it, so every
group has a learning signal from the first step)."""

from __future__ import annotations

import functools
import random

from model_helpers import tiny_policy

from transformer_toolkit.grpo import GRPOConfig, GRPOTrainer, PromptDataConfig, from_prompt_samples
from transformer_toolkit.grpo.rewards import text_of
from transformer_toolkit.tokenizer import RustBPETokenizer
from transformer_toolkit.trainer import TrainConfig

WORDS = "the sky is blue green red sun moon what color where in sea yes no answer".split()


@functools.cache
def small_bpe() -> RustBPETokenizer:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) + "\n" for _ in range(300)]
    lines += ["<|im_start|>user\nwhat color<|im_end|>\n<|im_start|>assistant\nblue<|im_end|>\n"] * 5
    return RustBPETokenizer().train(lines, vocab_size=300)


tiny_model = tiny_policy  # the name the tests here import


def rows(n: int, seed: int = 0, conversational: bool = True) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing = rng.choice(["sky", "sun", "sea", "moon"])
        q = f"what color is the {thing}?"
        out.append({"prompt": [{"role": "user", "content": q}] if conversational else q, "answer": "blue"})
    return out


def share_of_e(prompts, completions, answer, **_) -> list[float]:
    """A dense reward with TRL's signature: the share of e's in the completion's text."""
    assert len(answer) == len(completions)
    return [text_of(c).count("e") / max(1, len(text_of(c))) for c in completions]


def train_cfg(path, **kw) -> TrainConfig:
    base = dict(max_steps=6, eval_every=3, save_every=3, log_every=1, warmup_steps=1, lr=1e-2, min_lr=1e-3,
                grad_accum_steps=1, precision="fp32", eval_iters=2, ckpt_dir=str(path / "ckpt"), plot=False,
                progress="none", interruptible=False, weight_decay=0.0)
    return TrainConfig(**{**base, **kw})


def loaders(batch_size: int = 4, n: int = 24, **kw):
    cfg = PromptDataConfig(batch_size=batch_size, split=0.75, seed=1, max_prompt_len=40, **kw)
    return from_prompt_samples(rows(n), small_bpe(), cfg)


def make_trainer(path, model=None, grpo=None, reward_funcs=(share_of_e,), batch_size=4, **kw) -> GRPOTrainer:
    train_dl, val_dl = loaders(batch_size)
    model = model if model is not None else tiny_model(small_bpe().vocab_size)
    g = GRPOConfig(**{"group_size": 4, "max_new": 8, **(grpo or {})})
    return GRPOTrainer(model, train_dl, val_dl, small_bpe().vocab_size, train_cfg(path, **kw), tokenizer=small_bpe(),
                       grpo=g, reward_funcs=list(reward_funcs) if reward_funcs else None)

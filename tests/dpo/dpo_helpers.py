"""Shared pieces of the DPO tests: a small BPE tokenizer, a tiny model and preference samples in
each of TRL's formats."""

from __future__ import annotations

import functools
import random

from model_helpers import tiny_policy

from transformer_toolkit.tokenizer import RustBPETokenizer

WORDS = "the sky is blue green red sun moon what color where in sea yes no answer".split()


@functools.cache
def small_bpe() -> RustBPETokenizer:
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(8)) + "\n" for _ in range(300)]
    return RustBPETokenizer().train(lines, vocab_size=300)


tiny_model = tiny_policy  # the name the tests here import


def standard(n: int, seed: int = 0) -> list[dict]:
    """``prompt`` / ``chosen`` / ``rejected`` strings: the right colour against a wrong one."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        thing, good, bad = rng.choice(["sky", "sun", "sea", "moon"]), "blue", rng.choice(["green", "red"])
        out.append({"prompt": f"what color is the {thing}?", "chosen": f" the {thing} is {good}",
                    "rejected": f" the {thing} is {bad}"})
    return out


def conversational(n: int, seed: int = 0) -> list[dict]:
    out = []
    for s in standard(n, seed):
        out.append({"prompt": [{"role": "user", "content": s["prompt"]}],
                    "chosen": [{"role": "assistant", "content": s["chosen"].strip()}],
                    "rejected": [{"role": "assistant", "content": s["rejected"].strip()}]})
    return out


def implicit(n: int, seed: int = 0, conv: bool = False) -> list[dict]:
    if conv:
        return [{"chosen": s["prompt"] + s["chosen"], "rejected": s["prompt"] + s["rejected"]}
                for s in conversational(n, seed)]
    return [{"chosen": s["prompt"] + s["chosen"], "rejected": s["prompt"] + s["rejected"]} for s in standard(n, seed)]

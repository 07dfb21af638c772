"""Shared pieces of the SFT tests: a small BPE tokenizer and conversations of every shape."""

from __future__ import annotations

import functools
import random

from transformer_toolkit.tokenizer import RustBPETokenizer

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "What is Python?"},
    {"role": "assistant", "content": "Python is a programming language."},
    {"role": "user", "content": "How do I reverse a list?"},
    {"role": "assistant", "content": "Use my_list[::-1].\nOr reversed()."},
]


@functools.cache
def small_bpe() -> RustBPETokenizer:
    rng = random.Random(0)
    words = "what is python a programming language how do i reverse list use my or be brief add sum".split()
    lines = [" ".join(rng.choice(words) for _ in range(8)) + "\n" for _ in range(300)]
    return RustBPETokenizer().train(lines + [str(i) for i in range(100)], vocab_size=360)

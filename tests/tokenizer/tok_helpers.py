"""A small random corpus for the tokenizer tests."""

from __future__ import annotations

import random

WORDS = ("the quick brown fox jumps over lazy dog and then some more words for merges "
         "naïve café 東京 данные 🙂 def return import print(x) == 42 3.14").split()


def corpus(n_lines: int = 400, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 12))) + "\n" for _ in range(n_lines)]

"""A built-in SFT task set with checkable answers, generated on the fly (no download).

Two tasks: reverse a short list of words, and add two small numbers; and two harder ones for
reinforcement learning (``ttk grpo``): ``reverse_long`` (4 to 6 words) and ``add3`` (two 3-digit
numbers, so carries chain). Every prompt has one right answer, so a fine-tuned model can be
scored by exact match (``exact_match``).

>>> samples = synthetic_tasks(3, seed=0)
>>> samples[0]["messages"][0]["content"]        # doctest: +SKIP
'reverse: fish lake moon'
"""

from __future__ import annotations

import random

WORDS = ("cat", "dog", "sun", "moon", "tree", "star", "fish", "bird",
         "rock", "leaf", "rain", "snow", "fire", "wind", "lake", "hill")
TASKS = ("reverse", "add")
HARD_TASKS = ("reverse_long", "add3")
ALL_TASKS = TASKS + HARD_TASKS


def make_task(rng: random.Random, task: str, max_words: int = 3, max_number: int = 50) -> tuple[str, str]:
    """One (prompt, answer) pair."""
    if task == "reverse":
        words = rng.sample(WORDS, rng.randint(2, max_words))
        return "reverse: " + " ".join(words), " ".join(reversed(words))
    if task == "add":
        a, b = rng.randint(0, max_number), rng.randint(0, max_number)
        return f"add: {a} + {b}", str(a + b)
    if task == "reverse_long":
        words = rng.sample(WORDS, rng.randint(4, 6))
        return "reverse: " + " ".join(words), " ".join(reversed(words))
    if task == "add3":
        a, b = rng.randint(100, 999), rng.randint(100, 999)
        return f"add: {a} + {b}", str(a + b)
    raise ValueError(f"unknown synthetic task {task!r}; tasks: {', '.join(ALL_TASKS)}")


def synthetic_tasks(n: int, seed: int = 0, tasks: tuple[str, ...] = TASKS, exclude: set[str] | None = None,
                    multi_turn: float = 0.0, **kw) -> list[dict]:
    """``n`` conversations in the ``messages`` schema, tasks interleaved; prompts in ``exclude``
    are skipped (pass the training prompts to get a held-out set). A share ``multi_turn`` of
    the conversations carries a second exchange (another task), so that a model trained on
    them answers the latest question of a chat that has history."""
    if not 0.0 <= multi_turn <= 1.0:
        raise ValueError(f"multi_turn is the share of two-exchange conversations, in [0, 1]; got {multi_turn}")
    rng = random.Random(seed)
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} prompts outside the excluded set; ask for fewer")
        prompt, answer = make_task(rng, tasks[len(out) % len(tasks)], **kw)
        if exclude and prompt in exclude:
            continue
        messages = _exchange(prompt, answer)
        if multi_turn and rng.random() < multi_turn:
            prompt, answer = make_task(rng, rng.choice(tasks), **kw)
            if exclude and prompt in exclude:
                continue
            messages += _exchange(prompt, answer)
        out.append({"messages": messages})
    return out


def _exchange(prompt: str, answer: str) -> list[dict]:
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def user_prompts(samples: list[dict]) -> set[str]:
    """Every user message of ``samples`` (what a held-out set must avoid)."""
    return {m["content"] for s in samples for m in s["messages"] if m["role"] == "user"}


def exact_match(answer_fn, samples: list[dict]) -> float:
    """Fraction of samples whose last assistant message ``answer_fn(prompt)`` reproduces exactly."""
    hits = 0
    for s in samples:
        msgs = s["messages"]
        hits += answer_fn(msgs[-2]["content"]).strip() == msgs[-1]["content"].strip()
    return hits / max(1, len(samples))

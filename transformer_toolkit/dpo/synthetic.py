"""Built-in preference pairs (no download) over ``sft.synthetic``'s checkable tasks: the right
answer is chosen, a near miss rejected (a sum off by a little, words in a wrong order), in TRL's
conversational format, so ``ttk dpo`` runs with no arguments on the ``ttk sft`` model.

>>> synthetic_preferences(1, seed=0)[0]["chosen"]         # doctest: +SKIP
[{'role': 'assistant', 'content': 'moon lake fish'}]
"""

from __future__ import annotations

import random

from ..sft.synthetic import TASKS, make_task


def near_miss(rng: random.Random, task: str, prompt: str, answer: str) -> str:
    """A wrong answer that looks like a right one."""
    if task == "add":
        return str(int(answer) + rng.choice([-10, -2, -1, 1, 2, 10]))
    words = answer.split()
    wrong = words[::-1]  # the words as asked (not reversed); shuffled when that happens to be right
    while wrong == words:
        wrong = rng.sample(words, len(words))
    return " ".join(wrong)


def synthetic_preferences(n: int, seed: int = 0, tasks: tuple[str, ...] = TASKS,
                          exclude: set[str] | None = None) -> list[dict]:
    """``n`` conversational preference pairs, tasks interleaved; prompts in ``exclude`` skipped."""
    rng = random.Random(seed)
    out, tries = [], 0
    while len(out) < n:
        tries += 1
        if tries > 100 * n + 1000:
            raise ValueError(f"cannot draw {n} prompts outside the excluded set; ask for fewer")
        task = tasks[len(out) % len(tasks)]
        prompt, answer = make_task(rng, task)
        if exclude and prompt in exclude:
            continue
        out.append({"prompt": [{"role": "user", "content": prompt}],
                    "chosen": [{"role": "assistant", "content": answer}],
                    "rejected": [{"role": "assistant", "content": near_miss(rng, task, prompt, answer)}]})
    return out

"""Built-in GRPO prompts: the checkable tasks of ``sft.synthetic`` as TRL prompt-only rows.

Each row is ``{"prompt": [{"role": "user", "content": question}], "answer": right answer}``, so
the built-in ``exact_match`` / ``numeric_answer`` rewards score completions against ``answer``.
``add3`` (3-digit addition) and ``reverse_long`` (4-6 words) are hard for a small SFT model:
there is room for reinforcement learning to raise its exact match.

>>> synthetic_prompts(1, tasks=("add3",))[0]["answer"]     # doctest: +SKIP
'1127'
"""

from __future__ import annotations

from ..sft.synthetic import synthetic_tasks


def synthetic_prompts(n: int, seed: int = 0, tasks: tuple[str, ...] = ("add3", "reverse_long"),
                      exclude: set[str] | None = None) -> list[dict]:
    """``n`` prompt rows, tasks interleaved; questions in ``exclude`` are skipped (a held-out set)."""
    rows = []
    for s in synthetic_tasks(n, seed=seed, tasks=tuple(tasks), exclude=exclude):
        user, assistant = s["messages"]
        rows.append({"prompt": [user], "answer": assistant["content"]})
    return rows


def questions(rows: list[dict]) -> set[str]:
    """The questions of ``rows`` (what a held-out set must avoid)."""
    return {r["prompt"][-1]["content"] for r in rows}

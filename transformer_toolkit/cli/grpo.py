"""``ttk grpo``: reinforcement learning with verifiable rewards (GRPO) on a model, into a run folder.

With no arguments it tunes ``runs/sft-hard`` (``ttk sft --config sft-hard``: the harder built-in
tasks, 3-digit addition and long reversals) on prompts of the same tasks with the built-in
``exact_match`` reward, and reports the held-out exact match (greedy) before and after.
Sections: ``init``, ``data`` (a JSON/JSONL file of TRL prompt-only rows, ``{"prompt": ...,
"answer": ...}``, or ``builtin:synthetic``), ``grpo`` (group size, sampling, rewards, clipping,
KL), ``lora`` (adapters; ``--lora.r 0`` or no section: every weight trains) and ``train``.
"""

from __future__ import annotations

import os
import time

from . import posttrain as P

DEFAULT_INIT = "runs/sft-hard"  # the grpo recipe's init: what `ttk sft --config sft-hard` writes


def _rows(run: dict) -> tuple[list[dict], list[dict] | None]:
    """``(train rows, held-out rows or None)`` for the run's corpus."""
    from ..grpo.data import read_prompt_rows
    from ..grpo.synthetic import questions, synthetic_prompts

    ex, corpus = run["extras"], run["extras"]["corpus"]
    if corpus == "builtin:synthetic":
        tasks = tuple(ex["tasks"])
        train = synthetic_prompts(int(ex["n_samples"]), seed=0, tasks=tasks)
        seen = questions(train) | _sft_questions(run["init"])
        return train, synthetic_prompts(int(ex["n_eval"]), seed=1, tasks=tasks, exclude=seen)
    if isinstance(corpus, str) and os.path.isfile(corpus):
        return read_prompt_rows(corpus), None
    raise FileNotFoundError(f"data.corpus {corpus!r}: not builtin:synthetic nor an existing JSON/JSONL file of "
                            "prompt rows")


def _sft_questions(init) -> set[str]:
    """The user questions an init run was fine-tuned on, when it is a run folder that trained on the
    built-in synthetic tasks (``ttk sft``): the held-out prompts avoid them too, so the before/after
    scores are on questions neither stage trained on. Empty for any other init."""
    from ..sft.synthetic import TASKS, user_prompts
    from ..store import runs
    from .builtin import synthetic_split

    if not init or not os.path.isdir(init):
        return set()
    data = runs.read_config(init).get("data") or {}
    if data.get("corpus") != "builtin:synthetic" or "n_samples" not in data:
        return set()
    train, _ = synthetic_split(int(data["n_samples"]), int(data.get("n_eval", 0)), data.get("tasks") or TASKS,
                               multi_turn=float(data.get("multi_turn", 0.0)))
    return user_prompts(train)


def cmd_grpo(args, overrides: dict) -> int:
    """Tune the init model with GRPO; report the held-out mean reward (greedy) before and after."""
    from ..grpo import GRPOTrainer, from_prompt_samples

    with P.open_tuning(args, overrides, "grpo", DEFAULT_INIT, "ttk sft --config sft-hard") as t:
        grpo = t.run["grpo"]
        room = t.model.cfg.max_seq - grpo.max_new
        if room < 1:
            raise ValueError(f"grpo.max_new={grpo.max_new} leaves no room for a prompt in the model's max_seq="
                             f"{t.model.cfg.max_seq}; lower grpo.max_new")
        data_cfg = P.data_config(t, max_prompt_len=room)
        train_rows, held = _rows(t.run)
        train_dl, val_dl = from_prompt_samples(train_rows, t.tok, data_cfg, val_rows=held)
        trainer = P.make_trainer(t, GRPOTrainer, train_dl, val_dl, grpo=grpo)
        before = trainer.evaluate(every_prompt=True) if val_dl is not None else None
        t0 = time.time()
        summary = P.train(t, trainer)
    print(f"grpo: step {summary['step']}, {time.time() - t0:.0f}s -> {t.out}")
    if before is not None:
        after = trainer.evaluate(every_prompt=True)
        names = "+".join(name for name, _ in trainer.rewards)
        print(f"held-out {names} reward (greedy, {len(val_dl.dataset)} prompts): {-before:.3f} before -> "
              f"{-after:.3f} after")
    return 0

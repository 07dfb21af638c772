"""``ttk dpo``: preference-tune a model (a run folder or a pretrained model) into a run folder.

With no arguments it tunes ``runs/sft`` (what ``ttk sft`` writes) with LoRA on built-in pairs of
the same tasks (the right answer chosen, a near miss rejected) and reports the preference
accuracy and exact match on held-out prompts. Sections: ``init``, ``data`` (a JSON/JSONL file of
TRL-format pairs, or ``builtin:synthetic``), ``lora`` (``--lora.r 0``: every weight trains),
``dpo`` (beta, loss, reference) and ``train``.
"""

from __future__ import annotations

import os
import time

from . import posttrain as P

DEFAULT_INIT = "runs/sft"  # the dpo recipe's init: what `ttk sft` writes


def _loaders(run: dict, tok, data_cfg):
    """``(train_dl, val_dl, held-out pairs or [])`` for the run's corpus."""
    from ..dpo import from_preference_json, from_preference_samples
    from ..dpo.synthetic import synthetic_preferences

    ex, corpus = run["extras"], run["extras"]["corpus"]
    if corpus == "builtin:synthetic":
        tasks = tuple(ex["tasks"])
        train = synthetic_preferences(int(ex["n_samples"]), seed=0, tasks=tasks)
        held = synthetic_preferences(int(ex["n_eval"]), seed=1, tasks=tasks,
                                     exclude={s["prompt"][0]["content"] for s in train})
        return (*from_preference_samples(train, tok, data_cfg, val_samples=held), held)
    if isinstance(corpus, str) and os.path.isfile(corpus):
        return (*from_preference_json(corpus, tok, data_cfg), [])
    raise FileNotFoundError(f"data.corpus {corpus!r}: not builtin:synthetic nor an existing JSON/JSONL file of "
                            "preference pairs")


def _exact_match(model, tok, template, held: list[dict]) -> float:
    from ..sft import ChatSession

    session = ChatSession(model, tok, template=template, max_new=24, temperature=0)
    hits = 0
    for s in held:
        session.reset()
        hits += session.ask(s["prompt"][-1]["content"]).strip() == s["chosen"][-1]["content"].strip()
    return hits / max(1, len(held))


def cmd_dpo(args, overrides: dict) -> int:
    """Preference-tune the init model; report val preference accuracy (and exact match for built-in pairs)."""
    from ..dpo import DPOTrainer

    with P.open_tuning(args, overrides, "dpo", DEFAULT_INIT, "ttk sft") as t:
        data_cfg = P.data_config(t, seq_len=min(t.model.cfg.max_seq, 512))
        train_dl, val_dl, held = _loaders(t.run, t.tok, data_cfg)
        t0 = time.time()
        trainer = P.make_trainer(t, DPOTrainer, train_dl, val_dl, dpo=t.run["dpo"])
        summary = P.train(t, trainer)
    print(f"dpo: step {summary['step']}, reference {trainer.reference}, {time.time() - t0:.0f}s -> {t.out}")
    if val_dl is not None:
        trainer.evaluate()
        acc = trainer.eval_stats.get("accuracy")
        print(f"preference accuracy {acc:.0%} on {len(val_dl.dataset)} held-out pairs "
              f"(margin {trainer.eval_stats.get('margin', 0.0):.3f})")
    if held:
        t.model.eval()
        print(f"exact match: {_exact_match(t.model, t.tok, data_cfg.template, held):.0%} on {len(held)} held-out "
              "prompts")
    return 0

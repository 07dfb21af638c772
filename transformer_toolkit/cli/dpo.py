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

from ..store import load, runs
from . import config as C
from . import runfolder as R
from .use import add_lora

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


def _no_model_section(raw: dict) -> None:
    if raw.get("model"):
        raise ValueError("ttk dpo tunes the init model as it is; a model: section does not apply (drop it)")


def cmd_dpo(args, overrides: dict) -> int:
    """Preference-tune the init model; report val preference accuracy (and exact match for built-in pairs)."""
    import torch

    from ..dpo import DPOTrainer

    with R.open_run(args, overrides, "dpo", "dpo", check=_no_model_section) as (run, raw, out):
        if not run["init"]:
            raise ValueError("ttk dpo starts from a model: give --init RUN (e.g. runs/sft) or --model PATH")
        if run["init"] == DEFAULT_INIT and not os.path.exists(DEFAULT_INIT):  # else a Hub repo id would be tried
            raise FileNotFoundError(f"init {DEFAULT_INIT!r} does not exist: run `ttk sft` first, or give --init RUN "
                                    "or --model PATH")
        resume = R.resume_target(args, runs.checkpoint_dir(out))
        init = load(run["init"])  # a LoRA run's adapters merged: the base of this run's own
        model, tok = init.model.train(), init.tokenizer
        template, _ = init.chat_template()  # the init's own (the run's SFT template); data.template overrides
        given = raw.get("data") or {}
        data = {**run["data"].model_dump(exclude={"tokenizer", "template"}), "tokenizer": tok,
                "template": given.get("template", template),
                "seq_len": given.get("seq_len", min(model.cfg.max_seq, 512))}
        run["data"] = data_cfg = C.build(type(run["data"]), "data", data)
        runs.save_tokenizer(tok, out)
        train_dl, val_dl, held = _loaders(run, tok, data_cfg)
        train_cfg = R.train_config(run, out)
        torch.manual_seed(train_cfg.seed)  # the adapters' initial weights are part of what a seed reproduces
        add_lora(model, run)
        t0 = time.time()
        trainer = DPOTrainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok, dpo=run["dpo"],
                             data_config=R.data_settings(run))
        summary = trainer.train(resume_from=resume, on_start=R.config_writer(run, out, model.cfg, train_cfg))
    print(f"dpo: step {summary['step']}, reference {trainer.reference}, {time.time() - t0:.0f}s -> {out}")
    if val_dl is not None:
        trainer.evaluate()
        acc = trainer.eval_stats.get("accuracy")
        print(f"preference accuracy {acc:.0%} on {len(val_dl.dataset)} held-out pairs "
              f"(margin {trainer.eval_stats.get('margin', 0.0):.3f})")
    if held:
        model.eval()
        print(f"exact match: {_exact_match(model, tok, data_cfg.template, held):.0%} on {len(held)} held-out prompts")
    return 0

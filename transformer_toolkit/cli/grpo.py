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

from ..store import load, runs
from . import config as C
from . import runfolder as R
from .use import add_lora

DEFAULT_INIT = "runs/sft-hard"  # the grpo recipe's init: what `ttk sft --config sft-hard` writes


def _rows(run: dict) -> tuple[list[dict], list[dict] | None]:
    """``(train rows, held-out rows or None)`` for the run's corpus."""
    from ..grpo.data import read_prompt_rows
    from ..grpo.synthetic import questions, synthetic_prompts

    ex, corpus = run["extras"], run["extras"]["corpus"]
    if corpus == "builtin:synthetic":
        tasks = tuple(ex["tasks"])
        train = synthetic_prompts(int(ex["n_samples"]), seed=0, tasks=tasks)
        return train, synthetic_prompts(int(ex["n_eval"]), seed=1, tasks=tasks, exclude=questions(train))
    if isinstance(corpus, str) and os.path.isfile(corpus):
        return read_prompt_rows(corpus), None
    raise FileNotFoundError(f"data.corpus {corpus!r}: not builtin:synthetic nor an existing JSON/JSONL file of "
                            "prompt rows")


def _no_model_section(raw: dict) -> None:
    if raw.get("model"):
        raise ValueError("ttk grpo tunes the init model as it is; a model: section does not apply (drop it)")


def cmd_grpo(args, overrides: dict) -> int:
    """Tune the init model with GRPO; report the held-out mean reward (greedy) before and after."""
    import torch

    from ..grpo import GRPOTrainer, from_prompt_samples

    with R.open_run(args, overrides, "grpo", "grpo", check=_no_model_section) as (run, raw, out):
        if not run["init"]:
            raise ValueError("ttk grpo starts from a model: give --init RUN (e.g. runs/sft-hard) or --model PATH")
        if run["init"] == DEFAULT_INIT and not os.path.exists(DEFAULT_INIT):  # else a Hub repo id would be tried
            raise FileNotFoundError(f"init {DEFAULT_INIT!r} does not exist: run `ttk sft --config sft-hard` first, "
                                    "or give --init RUN or --model PATH")
        resume = R.resume_target(args, runs.checkpoint_dir(out))
        init = load(run["init"])  # a LoRA run's adapters merged: the base of this run's own
        model, tok = init.model.train(), init.tokenizer
        template, _ = init.chat_template()  # the init's own (the run's SFT template); data.template overrides
        given, grpo = raw.get("data") or {}, run["grpo"]
        room = model.cfg.max_seq - grpo.max_new
        if room < 1:
            raise ValueError(f"grpo.max_new={grpo.max_new} leaves no room for a prompt in the model's max_seq="
                             f"{model.cfg.max_seq}; lower grpo.max_new")
        data = {**run["data"].model_dump(exclude={"tokenizer", "template"}), "tokenizer": tok,
                "template": given.get("template", template), "max_prompt_len": given.get("max_prompt_len", room)}
        run["data"] = data_cfg = C.build(type(run["data"]), "data", data)
        runs.save_tokenizer(tok, out)
        train_rows, held = _rows(run)
        train_dl, val_dl = from_prompt_samples(train_rows, tok, data_cfg, val_rows=held)
        train_cfg = R.train_config(run, out)
        torch.manual_seed(train_cfg.seed)  # the adapters' initial weights are part of what a seed reproduces
        add_lora(model, run)
        trainer = GRPOTrainer(model, train_dl, val_dl, tok.vocab_size, train_cfg, tokenizer=tok, grpo=grpo,
                              data_config=R.data_settings(run))
        before = trainer.evaluate(every_prompt=True) if val_dl is not None else None
        t0 = time.time()
        summary = trainer.train(resume_from=resume, on_start=R.config_writer(run, out, model.cfg, train_cfg))
    print(f"grpo: step {summary['step']}, {time.time() - t0:.0f}s -> {out}")
    if before is not None:
        after = trainer.evaluate(every_prompt=True)
        names = "+".join(name for name, _ in trainer.rewards)
        print(f"held-out {names} reward (greedy, {len(val_dl.dataset)} prompts): {-before:.3f} before -> "
              f"{-after:.3f} after")
    return 0

"""The run flow ``ttk dpo`` and ``ttk grpo`` share: both tune an init model as it is (a run
folder or a pretrained model; a ``model:`` section does not apply), in the init's tokenizer and
chat template, with the run's ``lora:`` adapters, in a run folder (``runfolder.py``).

A command opens the run (``open_tuning``), builds its data config (``data_config``) and its
loaders, makes its trainer (``make_trainer``) and trains it (``train``); what it reports is its own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..store import load, runs
from . import config as C
from . import runfolder as R
from .use import add_lora


@dataclass
class Tuning:
    """An open post-training run: its resolved and raw configs, its folder, the checkpoint to
    resume from (None: fresh), the init model (in train mode), its tokenizer and chat template;
    ``train_cfg`` once ``make_trainer`` has built it."""

    run: dict
    raw: dict
    out: Path
    resume: Any
    model: Any
    tok: Any
    template: Any
    train_cfg: Any = None


@contextmanager
def open_tuning(args, overrides: dict, kind: str, default_init: str, makes_init: str) -> Iterator[Tuning]:
    """Lock the run folder of ``ttk <kind>`` and load its init. ``default_init``: the recipe's
    init, which the command ``makes_init`` writes (named in the error when it is missing)."""

    def no_model_section(raw: dict) -> None:
        if raw.get("model"):
            raise ValueError(f"ttk {kind} tunes the init model as it is; a model: section does not apply (drop it)")

    with R.open_run(args, overrides, kind, kind, check=no_model_section) as (run, raw, out):
        if not run["init"]:
            raise ValueError(f"ttk {kind} starts from a model: give --init RUN (e.g. {default_init}) or --model PATH")
        if run["init"] == default_init and not os.path.exists(default_init):  # else a Hub repo id would be tried
            raise FileNotFoundError(f"init {default_init!r} does not exist: run `{makes_init}` first, or give "
                                    "--init RUN or --model PATH")
        resume = R.resume_target(args, runs.checkpoint_dir(out))
        init = load(run["init"])  # a LoRA run's adapters merged: the base of this run's own
        template, _ = init.chat_template()  # the init's own (the run's SFT template); data.template overrides
        yield Tuning(run, raw, out, resume, init.model.train(), init.tokenizer, template)


def data_config(t: Tuning, **defaults):
    """The run's data config in the init's tokenizer and template (a ``data.template`` given
    overrides it), with ``defaults`` for the fields the config does not give; saves the
    tokenizer into the run folder."""
    given = t.raw.get("data") or {}
    data = {**t.run["data"].model_dump(exclude={"tokenizer", "template"}), "tokenizer": t.tok,
            "template": given.get("template", t.template), **{k: given.get(k, v) for k, v in defaults.items()}}
    t.run["data"] = data_cfg = C.build(type(t.run["data"]), "data", data)
    runs.save_tokenizer(t.tok, t.out)
    return data_cfg


def make_trainer(t: Tuning, trainer_cls, train_dl, val_dl, **kw):
    """``trainer_cls`` on the init model with the run's adapters (seeded first: the adapters'
    initial weights are part of what a seed reproduces) and its train config."""
    import torch

    t.train_cfg = R.train_config(t.run, t.out)
    torch.manual_seed(t.train_cfg.seed)
    add_lora(t.model, t.run)
    return trainer_cls(t.model, train_dl, val_dl, t.tok.vocab_size, t.train_cfg, tokenizer=t.tok,
                       data_config=R.data_settings(t.run), **kw)


def train(t: Tuning, trainer) -> dict:
    """Train (resuming as ``--resume`` says); config.yaml is written once training starts."""
    return trainer.train(resume_from=t.resume, on_start=R.config_writer(t.run, t.out, t.model.cfg, t.train_cfg))

"""``--run`` and ``--model``: the model a command works on, loaded through ``store.load``.

``--run`` is a run folder or a checkpoint in one; ``--model`` a pretrained model: a transformers
or native folder (``ttk pull``), a ``.gguf`` file or a Hub repo id (pulled once into
``~/.cache/transformer_toolkit/hub``). Each flag refuses the other's kind with the fix.
"""

from __future__ import annotations

import sys

from ..store import CHECKPOINT, PRETRAINED, RUN, Loaded, load, source_kind
from ..store.load import HUB_ID


def load_source(args, merged: bool = True) -> Loaded:
    """The model, tokenizer and chat template of ``--run`` or ``--model`` (a LoRA run's adapters
    merged into the weights; ``merged=False`` keeps them as adapters)."""
    if getattr(args, "model", None):
        kind = source_kind(args.model)
        if kind in (RUN, CHECKPOINT) or (kind is None and not HUB_ID.fullmatch(str(args.model))):
            raise FileNotFoundError(f"--model {str(args.model)!r}: not a .gguf file nor a folder with config.json, "
                                    "nor a Hub repo id (owner/name); a training run goes to --run")
        return load(args.model)
    kind = source_kind(args.run)
    if kind in PRETRAINED:
        raise FileNotFoundError(f"--run {args.run!r} is a pretrained model, not a run folder; use --model {args.run}")
    if kind is None:
        raise FileNotFoundError(f"--run {str(args.run)!r}: no checkpoint or run folder there; check the path")
    return load(args.run, merged=merged)


def chat_template(loaded: Loaded, chosen=None):
    """``chosen`` (``--template``), else the model's own: a run's SFT template (chatml for a
    pretraining run), a pretrained model's matching preset, else chatml with a one-line warning."""
    if chosen:
        return chosen
    template, known = loaded.chat_template()
    if not known:
        print(f"warning: {loaded.path}'s chat template matches none of our presets (or it has none); "
              "using chatml (pick another with --template)", file=sys.stderr)
    return template

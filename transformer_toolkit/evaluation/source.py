"""What an evaluation takes as a model: anything ``store.load`` loads.

``load(source)`` -> ``(model, tokenizer, template)`` for a run folder, a ``.pt`` checkpoint in
one, a transformers or native folder, a ``.gguf`` file or a Hub repo id; ``template_of`` gives
the chat template of an already ``Loaded`` source; ``run_folder`` says where a source's results
belong and ``heldout_ids`` reads a pretraining run's held-out split.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..store import CHECKPOINT, PRETRAINED, RUN, Loaded, runs, source_kind
from ..store import load as load_any


def load(source: str | os.PathLike):
    """``(model in eval mode, tokenizer, chat template)`` (see ``template_of``)."""
    loaded = load_any(source)
    return loaded.model.eval(), loaded.tokenizer, template_of(loaded)


def template_of(loaded: Loaded):
    """The chat template to evaluate with: a run's (a ChatTemplate or preset name; chatml for a
    pretraining run); for a pretrained model with a transformers tokenizer and a Jinja template
    None, meaning that template (rendered by transformers, as lm-eval's ``hf`` model does),
    else the preset its template renders like (chatml when none)."""
    if loaded.kind not in PRETRAINED:
        return loaded.template or "chatml"
    from ..tokenizer.hf import HFTokenizer

    tok = loaded.tokenizer
    if isinstance(tok, HFTokenizer) and getattr(tok, "chat_template", None):
        return None
    return loaded.chat_template()[0]


def run_folder(source: str | os.PathLike) -> Path | None:
    """The run folder a source belongs to (the folder itself, or the run of a checkpoint), None
    for a pretrained model."""
    kind = source_kind(source)
    if kind == CHECKPOINT:
        return runs.run_dir_of(source)
    return Path(source) if kind == RUN and runs.checkpoint_dir(source).is_dir() else None


def heldout_ids(run: str | os.PathLike):
    """A function returning the held-out token ids of a pretraining run (the val side of its
    token file, cut where training cut it), or None for a run with no such split (SFT)."""
    folder = run_folder(run)
    if folder is None or not (folder / runs.CONFIG).is_file():
        return None
    data = runs.read_config(folder).get("data") or {}
    if "split" not in data or "template" in data:  # an SFT run splits conversations, not a token stream
        return None
    corpus = data.get("corpus")
    tokens = Path(corpus) if isinstance(corpus, str) and corpus.endswith((".bin", ".npy")) else \
        folder / "data" / "tokens.bin"

    def ids():
        from ..data import DataConfig
        from ..data.sources import split_spec
        from ..data.tokens import token_spec

        if not tokens.is_file():
            raise FileNotFoundError(f"the held-out split of {folder} lives in {tokens}, which is gone; pass data files "
                                    "to the bpb task instead")
        cfg = DataConfig(seq_len=int(data.get("seq_len", 1)), batch_size=1, split=float(data["split"]))
        return split_spec(token_spec(tokens), cfg)[1].open()

    return ids

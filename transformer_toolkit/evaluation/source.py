"""What an evaluation takes as a model: anything ``ttk`` loads.

``load(source)`` -> ``(model, tokenizer, template)`` for a run folder, a ``.pt`` checkpoint in
one, a transformers folder (ours or a supported family) or a ``.gguf`` file. ``run_folder``
says where a source's results belong.
"""

from __future__ import annotations

import os
from pathlib import Path


def load(source: str | os.PathLike):
    """``(model in eval mode, tokenizer, chat template)``: the template is the run's (a
    ChatTemplate or preset name); for a pretrained model with a transformers tokenizer and a
    Jinja template None, meaning that template (rendered by transformers, as lm-eval's ``hf``
    model does), else the preset its template renders like (chatml when none)."""
    from ..store import PRETRAINED
    from ..store import load as load_source
    from ..tokenizer.hf import HFTokenizer

    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"model source {os.fspath(source)!r} does not exist: give a run folder, a .pt "
                                "checkpoint, a transformers folder or a .gguf file")
    loaded = load_source(path)
    tok, (template, _) = loaded.tokenizer, loaded.chat_template()
    own = loaded.kind in PRETRAINED and isinstance(tok, HFTokenizer) and getattr(tok, "chat_template", None)
    return loaded.model.eval(), tok, None if own else template


def run_folder(source: str | os.PathLike) -> Path | None:
    """The run folder a source belongs to (the folder itself, or the run of a checkpoint), None
    for a pretrained model."""
    path = Path(source)
    if path.is_file() and path.suffix == ".pt":
        from ..store.runs import run_dir_of

        return run_dir_of(path)
    if path.is_dir() and (path / "checkpoints").is_dir():
        return path
    return None


def heldout_ids(run: str | os.PathLike):
    """A function returning the held-out token ids of a pretraining run (the val side of its
    token file, cut where training cut it), or None for a run with no such split (SFT)."""
    import yaml

    folder = run_folder(run)
    cfg_path = folder / "config.yaml" if folder is not None else None
    if cfg_path is None or not cfg_path.is_file():
        return None
    data = (yaml.safe_load(cfg_path.read_text(encoding="utf-8")) or {}).get("data") or {}
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

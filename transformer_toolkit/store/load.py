"""``load(source)``: a model, its tokenizer and chat template from wherever they are.

A source is a run folder (or a ``.pt`` checkpoint inside one), a transformers folder, a native
folder (configs with no transformers counterpart), a ``.gguf`` file, or a Hub repo id
(``owner/name``), pulled once into a local folder and loaded from there. ``Transformer.from_checkpoint``,
``Transformer.from_pretrained`` and every ``ttk`` command that reads a model go through here.
A LoRA run (its checkpoints hold adapters only) loads its base model, from where the run
recorded it, with the adapters merged in (``merged=False``: kept as adapters; adapted.py).

>>> loaded = load("runs/sft")                       # doctest: +SKIP
>>> loaded.model, loaded.tokenizer, loaded.template  # doctest: +SKIP
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..convert import gguf_module, load_native, load_pretrained, template_for_model
from ..convert.native import is_native
from ..model.loading import check_finite
from ..tokenizer import load_tokenizer
from . import adapted, runs
from .checkpoint import load_checkpoint_model, read_ckpt

RUN, CHECKPOINT, TRANSFORMERS, NATIVE, GGUF = "run", "checkpoint", "transformers", "native", "gguf"
PRETRAINED = (TRANSFORMERS, NATIVE, GGUF)
# a Hub repo id: owner/name, letters, digits and - _ . (as the Hub allows)
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")
HUB_CACHE = Path.home() / ".cache" / "transformer_toolkit" / "hub"


@dataclass
class Loaded:
    """What ``load`` found. ``template``: the chat template a run was fine-tuned with (what an
    export stores; None for a pretraining run and for a pretrained model, whose tokenizer keeps
    its own); ``chat_template()`` is the one to chat with."""

    model: torch.nn.Module
    tokenizer: object | None
    kind: str  # run | checkpoint | transformers | native | gguf
    path: Path  # the local source (the folder a Hub repo was pulled into)
    checkpoint: Path | None = None  # the .pt file of a run
    run_config: dict = field(default_factory=dict)  # a run's config.yaml
    template: object | None = None

    def chat_template(self) -> tuple[object, bool]:
        """``(template, known)``: a run's SFT template (chatml for a pretraining run); for a
        pretrained model the preset its own Jinja template renders like, else ``(chatml, False)``."""
        if self.kind not in PRETRAINED:
            return self.template or "chatml", True
        return template_for_model(self.path, self.tokenizer)


def source_kind(path: str | os.PathLike) -> str | None:
    """The kind of a local source, or None when nothing loadable is at ``path``."""
    p = Path(path)
    if p.is_file():
        return GGUF if p.suffix == ".gguf" else CHECKPOINT
    if not p.is_dir():
        return None
    if (p / runs.CHECKPOINTS).is_dir() or not (p / "config.json").is_file():
        return RUN
    return NATIVE if is_native(p) else TRANSFORMERS


def load(source: str | os.PathLike, *, tokenizer: bool = True, map_location="cpu", dtype: torch.dtype | None = None,
         revision: str | None = None, save_dir: str | os.PathLike | None = None, api=None, merged: bool = True,
         base: torch.nn.Module | str | os.PathLike | None = None, **overrides) -> Loaded:
    """The model at ``source`` in eval mode, with its tokenizer (``tokenizer=False``: None).

    ``map_location``: where a checkpoint's tensors go (default CPU, memory-mapped); ``dtype``
    casts the weights after loading; ``overrides`` replace config fields of a pretrained model
    (e.g. ``max_seq=512``). A Hub id is pulled into ``save_dir`` (default
    ``~/.cache/transformer_toolkit/hub/owner--name``) unless that folder already holds it;
    ``revision`` and ``api`` go to ``hf_hub.pull_from_hub``. A LoRA run's adapters are merged into
    its base's weights unless ``merged=False``; ``base`` (a model or a source) replaces the base
    the run recorded."""
    path = _local(source, revision, save_dir, api)
    kind = source_kind(path)
    if kind in (RUN, CHECKPOINT):
        if overrides:
            raise ValueError(f"config overrides ({', '.join(overrides)}) apply to pretrained models; a checkpoint "
                             "loads with the config it was trained with")
        ckpt = runs.resolve_checkpoint(path)
        model = _checkpoint_model(ckpt, map_location, merged, base)
        run_dir = runs.run_dir_of(ckpt)
        run_config = runs.read_config(run_dir)
        tok = runs.load_tokenizer(run_dir, ckpt) if tokenizer else None
        loaded = Loaded(model, tok, kind, Path(path), ckpt, run_config, runs.template(run_config))
    else:
        model = _pretrained(path, kind, overrides)
        loaded = Loaded(model, load_tokenizer(path) if tokenizer else None, kind, Path(path))
    if isinstance(loaded.model, torch.nn.Module):
        check_finite(loaded.model, os.fspath(loaded.checkpoint or path))
    check_vocab(loaded)
    if dtype is not None:
        loaded.model = loaded.model.to(dtype)
    return loaded


def check_vocab(loaded: Loaded) -> None:
    """ValueError when the tokenizer can produce ids the model has no embedding row for (a run's
    tokenizer.json replaced by another's): the model would index past its table or, on some
    devices, read garbage. (A model with more rows than the tokenizer has tokens is normal:
    vocabularies are often padded.)"""
    tok, cfg = loaded.tokenizer, getattr(loaded.model, "cfg", None)
    if tok is None or cfg is None or tok.vocab_size <= cfg.vocab_size:
        return
    raise ValueError(f"{loaded.path}: the tokenizer has {tok.vocab_size:,} tokens but the model has {cfg.vocab_size:,} "
                     f"embedding rows, so ids {cfg.vocab_size:,} and up have no embedding: this is not the tokenizer "
                     "the model was trained with (restore the run's or the model's own tokenizer files)")


def load_model(source: str | os.PathLike, **kwargs) -> torch.nn.Module:
    """``load(source, tokenizer=False, ...).model``: the model alone."""
    return load(source, tokenizer=False, **kwargs).model


def _checkpoint_model(path: Path, map_location, merged: bool, base) -> torch.nn.Module:
    """The model of the checkpoint file ``path``; for a LoRA run its base with the adapters on it."""
    ckpt = read_ckpt(path, mmap=True)  # memory-mapped: the entries are read, the weights' pages only if used
    if not adapted.is_adapter_checkpoint(ckpt):
        return load_checkpoint_model(path, map_location)
    if base is None:
        base = adapted.base_source(ckpt, path)
        if not os.path.exists(base) and not HUB_ID.fullmatch(base):
            raise FileNotFoundError(f"{path} holds LoRA adapters for the base {base!r}, which no longer exists; "
                                    "pass base= (the model or path the run started from)")
    if not isinstance(base, torch.nn.Module):
        base = load_model(base, map_location=map_location)  # a LoRA run as base: its adapters merged
    return adapted.adapt(base, ckpt, path, merged)


def _pretrained(path: str, kind: str, overrides: dict):
    if kind == GGUF:
        return gguf_module().load_gguf(path, **overrides)
    if kind == NATIVE:
        return load_native(path, **overrides)
    return load_pretrained(path, **overrides)


def _local(source, revision, save_dir, api) -> str:
    """A local path for ``source``: itself when something is there, else a pulled Hub repo."""
    s = os.fspath(source)
    if os.path.exists(s):
        return s
    if not HUB_ID.fullmatch(s):
        raise FileNotFoundError(f"no run folder, checkpoint, model folder or .gguf file at {s!r}; a Hub repo is "
                                "named owner/name (or fetch it first with "
                                "transformer_toolkit.hf_hub.pull_from_hub(repo_id, save_dir=...))")
    folder = Path(save_dir) if save_dir is not None else HUB_CACHE / s.replace("/", "--")
    pulled = _pulled(folder)
    if pulled is None:  # not pulled before (a pull that was, is loaded as it is)
        from ..hf_hub import pull_from_hub

        pull_from_hub(s, save_dir=folder, revision=revision, api=api)
        pulled = _pulled(folder)
    if pulled is None:
        raise ValueError(f"{s}: the pulled repo holds neither a config.json nor one .gguf file; load a file of "
                         f"{os.fspath(folder)} directly")
    return pulled


def _pulled(folder: Path) -> str | None:
    """What to load from a pulled repo: the folder (config.json), its only .gguf file, or None."""
    if (folder / "config.json").is_file():
        return os.fspath(folder)
    ggufs = sorted(folder.glob("*.gguf")) if folder.is_dir() else []
    return os.fspath(ggufs[0]) if len(ggufs) == 1 else None

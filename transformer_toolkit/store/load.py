"""``load(source)``: a model, its tokenizer and chat template from wherever they are.

A source is a run folder (or a ``.pt`` checkpoint inside one), a transformers folder, a native
folder (configs with no transformers counterpart), a ``.gguf`` file, or a Hub repo id
(``owner/name``), pulled once into a local folder and loaded from there. ``Transformer.from_checkpoint``,
``Transformer.from_pretrained`` and every ``ttk`` command that reads a model go through here.

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
from ..tokenizer import load_tokenizer
from . import runs
from .checkpoint import load_checkpoint_model

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
         revision: str | None = None, save_dir: str | os.PathLike | None = None, api=None, **overrides) -> Loaded:
    """The model at ``source`` in eval mode, with its tokenizer (``tokenizer=False``: None).

    ``map_location``: where a checkpoint's tensors go (default CPU, memory-mapped); ``dtype``
    casts the weights after loading; ``overrides`` replace config fields of a pretrained model
    (e.g. ``max_seq=512``). A Hub id is pulled into ``save_dir`` (default
    ``~/.cache/transformer_toolkit/hub/owner--name``) unless that folder already holds it;
    ``revision`` and ``api`` go to ``hf_hub.pull_from_hub``."""
    path = _local(source, revision, save_dir, api)
    kind = source_kind(path)
    if kind in (RUN, CHECKPOINT):
        if overrides:
            raise ValueError(f"config overrides ({', '.join(overrides)}) apply to pretrained models; a checkpoint "
                             "loads with the config it was trained with")
        ckpt = runs.resolve_checkpoint(path)
        model = load_checkpoint_model(ckpt, map_location)
        run_dir = runs.run_dir_of(ckpt)
        run_config = runs.read_config(run_dir)
        tok = runs.load_tokenizer(run_dir, ckpt) if tokenizer else None
        loaded = Loaded(model, tok, kind, Path(path), ckpt, run_config, runs.template(run_config))
    else:
        model = _pretrained(path, kind, overrides)
        loaded = Loaded(model, load_tokenizer(path) if tokenizer else None, kind, Path(path))
    if dtype is not None:
        loaded.model = loaded.model.to(dtype)
    return loaded


def load_model(source: str | os.PathLike, **kwargs) -> torch.nn.Module:
    """``load(source, tokenizer=False, ...).model``: the model alone."""
    return load(source, tokenizer=False, **kwargs).model


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

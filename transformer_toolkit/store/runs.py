"""Run folders: what ``ttk train`` and ``ttk sft`` write, and what every other command reads.

::

    runs/NAME/
      config.yaml      the resolved run config (every model, train and data field filled in)
      tokenizer.json   ours; a pretrained model's tokenizer is kept as its transformers files
      checkpoints/     best.pt, step_N.pt, pause.pt (see checkpoint.py)
      metrics.jsonl, loss.png, data/tokens.bin
      made_from.json   what tokenizer.json and data/tokens.bin were made from (``made_from``)
      .lock            held by the process training in the folder (``locked``)

A run folder or any checkpoint inside it is enough to rebuild the model (the checkpoint holds
its config), the tokenizer and the chat template it was fine-tuned with.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml

from ..atomic import atomic_write_text, exclusive_lock
from ..convert.hf_io import write_tokenizer
from ..tokenizer import ByteLevelTokenizer, RustBPETokenizer
from ..tokenizer import load_tokenizer as load_any_tokenizer
from ..tokenizer.templates import ChatTemplate
from .checkpoint import latest_ckpt, read_ckpt

CONFIG, TOKENIZER, CHECKPOINTS = "config.yaml", "tokenizer.json", "checkpoints"
MADE_FROM, LOCK = "made_from.json", ".lock"


def checkpoint_dir(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / CHECKPOINTS


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """The .pt file meant by ``path``: the file itself, or for a run folder (or its
    ``checkpoints/``) best.pt, else (or when best.pt is unreadable, with a warning) the newest
    readable of pause.pt / step_N.pt."""
    p = Path(path)
    if p.is_file():
        return p
    if not p.is_dir():
        raise FileNotFoundError(f"no checkpoint or run folder at {os.fspath(path)!r}; check the path")
    for folder in (p / CHECKPOINTS, p):
        if (folder / "best.pt").is_file():
            try:
                read_ckpt(folder / "best.pt", mmap=True)  # the header only: mmap reads no weights
                return folder / "best.pt"
            except ValueError as e:
                latest = latest_ckpt(folder)
                if latest is None:
                    raise
                warnings.warn(f"{e}; using {latest} instead", stacklevel=2)
                return Path(latest)
        if folder.is_dir():
            latest = latest_ckpt(folder)
            if latest is not None:
                return Path(latest)
    raise FileNotFoundError(f"{os.fspath(path)!r} holds no checkpoint (best.pt, pause.pt or step_N.pt, "
                            f"directly or under {CHECKPOINTS}/)")


def run_dir_of(path: str | os.PathLike) -> Path:
    """The run folder of a run folder or of a checkpoint inside ``<run>/checkpoints/``."""
    p = Path(path)
    if p.is_file():
        p = p.parent
    return p.parent if p.name == CHECKPOINTS else p


class _UniqueKeyLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a key given twice in one mapping (plain YAML keeps the
    last one silently, so a second ``model:`` section would replace the first unseen)."""

    def construct_mapping(self, node, deep=False):
        seen = {}  # key -> the line it first appears on
        for key_node, _ in node.value:
            key, line = self.construct_object(key_node, deep=True), key_node.start_mark.line + 1
            try:
                if key in seen:
                    raise yaml.YAMLError(f"line {line}: duplicate key {key!r} (first at line {seen[key]}); keep one")
                seen[key] = line
            except TypeError:  # an unhashable key: the base class says so
                break
        return super().construct_mapping(node, deep)


def load_yaml(text: str, source: str | os.PathLike) -> object:
    """``yaml.safe_load(text)`` with a duplicate key, or a syntax error, as a one-line ValueError
    naming ``source`` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)  # a SafeLoader: no Python tags
    except yaml.MarkedYAMLError as e:
        where = f"line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}: " if e.problem_mark else ""
        raise ValueError(f"{os.fspath(source)}: not valid YAML ({where}{e.problem or e.context}); fix the file") \
            from None
    except yaml.YAMLError as e:
        raise ValueError(f"{os.fspath(source)}: {e}") from None


def check_sections(config: object, source: str | os.PathLike, sections=("model", "train", "data")) -> dict:
    """``config`` when it is a mapping whose ``sections`` are mappings (or absent); else a
    ValueError naming ``source``."""
    if config is None:
        return {}
    if not isinstance(config, dict):
        raise ValueError(f"{os.fspath(source)}: a run config must be a mapping with sections {', '.join(sections)}, "
                         f"got {type(config).__name__}")
    for name in sections:
        if not isinstance(config.get(name) or {}, dict):
            raise ValueError(f"{os.fspath(source)}: section {name!r} must be a mapping of field: value, "
                             f"got {config[name]!r}")
    return config


def read_config(run_dir: str | os.PathLike) -> dict:
    """The run's config.yaml as a dict ({} when the folder has none, e.g. a bare checkpoint folder);
    a file that is not valid YAML or not a run config is a ValueError naming it."""
    path = Path(run_dir) / CONFIG
    if not path.is_file():
        return {}
    return check_sections(load_yaml(path.read_text(encoding="utf-8"), path), path)


def write_config(config: dict, run_dir: str | os.PathLike) -> None:
    """Write config.yaml atomically (a crash never leaves half a config next to the checkpoints)."""
    atomic_write_text(Path(run_dir) / CONFIG, yaml.safe_dump(config, sort_keys=False))


@contextmanager
def locked(run_dir: str | os.PathLike) -> Iterator[Path]:
    """Hold the run folder's lock for the block (created with the folder when missing): a second
    process that tries to write the same run is refused at once (``atomic.LockedError``), and
    the lock dies with its holder, so a killed run never blocks the next one. A folder this call
    created is removed again when the block fails leaving nothing in it."""
    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise ValueError(f"{os.fspath(run_dir)} is a file, and a run needs a folder there; choose another --out")
    created = not run_dir.exists()
    try:
        with exclusive_lock(run_dir / LOCK, f"run folder {os.fspath(run_dir)}"):
            yield run_dir
    except BaseException:
        if created and run_dir.is_dir() and all(p.name == LOCK or p.is_dir() and not any(p.iterdir())
                                                for p in run_dir.iterdir()):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def made_from(run_dir: str | os.PathLike, name: str) -> dict | None:
    """The record of what the run folder's file ``name`` (e.g. ``tokenizer.json``) was made
    from, as ``record_made_from`` stored it; None when there is none (or it is unreadable)."""
    try:
        return json.loads((Path(run_dir) / MADE_FROM).read_text(encoding="utf-8")).get(name)
    except (OSError, ValueError, AttributeError):
        return None


def record_made_from(run_dir: str | os.PathLike, name: str, record: dict) -> None:
    """Store ``record`` (plain JSON) as what ``name`` was made from; call it once the file is written."""
    path = Path(run_dir) / MADE_FROM
    try:
        records = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        records = {}
    records = records if isinstance(records, dict) else {}
    records[name] = record
    atomic_write_text(path, json.dumps(records, indent=2, sort_keys=True) + "\n")


def template(run_config: dict):
    """The chat template a run was fine-tuned with, as config.yaml stores it (a ChatTemplate for a
    dict, a preset name as is); None for a pretraining run."""
    t = (run_config.get("data") or {}).get("template")
    return ChatTemplate.from_dict(t) if isinstance(t, dict) else t


def load_tokenizer(run_dir: str | os.PathLike, checkpoint: str | os.PathLike | None = None):
    """The run's tokenizer: a pretrained model's transformers files (``ttk sft --model``) or our
    tokenizer.json, in the run folder or next to ``checkpoint``."""
    folders = [Path(run_dir)] + ([Path(checkpoint).parent] if checkpoint is not None else [])
    for folder in folders:
        if (folder / "tokenizer_config.json").is_file():
            return load_any_tokenizer(folder)
        if (folder / TOKENIZER).is_file():
            return load_any_tokenizer(folder / TOKENIZER)
    raise FileNotFoundError(f"no {TOKENIZER} in {os.fspath(run_dir)} "
                            f"{'' if checkpoint is None else f'or next to {os.fspath(checkpoint)}'}".rstrip())


def save_tokenizer(tokenizer, run_dir: str | os.PathLike) -> None:
    """Keep the tokenizer in a run folder: ours as tokenizer.json, a transformers one (from a
    pretrained model) as its tokenizer files, which ``load_tokenizer`` reads back."""
    if isinstance(tokenizer, (RustBPETokenizer, ByteLevelTokenizer)):
        tokenizer.save(str(Path(run_dir) / TOKENIZER))
    else:
        write_tokenizer(tokenizer, os.fspath(run_dir))


def metrics(checkpoint: str | os.PathLike) -> tuple[dict, int | None]:
    """``(metrics, step)`` stored in a checkpoint: val_loss, best_val_loss and its perplexity
    (memory-mapped: the numbers are read, not the weights)."""
    ckpt = read_ckpt(checkpoint, mmap=True)
    out = {}
    for key in ("val_loss", "best_val_loss"):
        v = ckpt.get(key)
        if v is not None and math.isfinite(float(v)):
            out[key] = float(v)
    if "best_val_loss" in out:
        out["perplexity"] = math.exp(min(out["best_val_loss"], 50.0))
    return out, ckpt.get("step")

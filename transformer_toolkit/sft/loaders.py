"""SFT loaders: samples from memory, JSON/JSONL files or a Hugging Face dataset -> batches.

Every loader returns ``(train_dl, val_dl)``; batches are ``(x, y, loss_mask)``, plus
``doc_ids`` when ``cfg.packing`` is on. Order and resume work as in pretraining (TokenLoader).
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Iterable

import torch

from ..data.loader import TokenLoader
from .config import SFTDataConfig
from .dataset import SFTRows
from .debug import print_debug
from .render import Rendered, to_messages, truncate


def render_samples(samples: Iterable, tokenizer, cfg: SFTDataConfig) -> tuple[list[Rendered], int]:
    """Render and truncate every sample; returns (rendered, number dropped for lack of a trained token)."""
    out, dropped = [], 0
    for i, sample in enumerate(samples):
        msgs = to_messages(sample, i, cfg.schema)
        r = truncate(msgs, tokenizer, cfg.template, cfg.seq_len + 1, cfg.truncation_strategy)
        if r is None:
            dropped += 1
        else:
            out.append(r)
    return out, dropped


def build_loaders(samples: Iterable, tokenizer, cfg: SFTDataConfig, source: str = "samples"):
    """The shared path of every ``from_sft_*`` loader."""
    if tokenizer is None:
        tokenizer = cfg.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer: pass one to the loader or set SFTDataConfig(tokenizer=...)")
    cfg = cfg.model_copy()
    for name in ("bos_id", "eos_id", "pad_id"):  # the tokenizer supplies what the config leaves open
        if getattr(cfg, name) is None:
            setattr(cfg, name, getattr(tokenizer, name, None))
    rendered, dropped = render_samples(samples, tokenizer, cfg)
    total = len(rendered) + dropped
    if total == 0:
        raise ValueError(f"{source}: no samples found")
    if dropped:
        warnings.warn(f"{source}: dropped {dropped} of {total} samples that had no trained token left after "
                      f"truncation to seq_len={cfg.seq_len} (truncation_strategy={cfg.truncation_strategy!r}); "
                      "raise seq_len or use truncation_strategy='token'", stacklevel=3)
    if len(rendered) < 2:
        raise ValueError(f"{source}: {len(rendered)} usable sample(s); need at least 2 to split into train and val")
    order = torch.randperm(len(rendered), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    n_train = min(len(rendered) - 1, max(1, int(round(len(rendered) * cfg.split))))
    pad = cfg.pad_id if cfg.pad_id is not None else (cfg.eos_id if cfg.eos_id is not None else 0)
    train = SFTRows([rendered[i] for i in order[:n_train]], cfg.seq_len, pad, cfg.packing)
    val = SFTRows([rendered[i] for i in order[n_train:]], cfg.seq_len, pad, cfg.packing)
    common = dict(seed=cfg.seed, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory)
    train_dl = TokenLoader(train, min(cfg.batch_size, len(train)), shuffle=cfg.shuffle, drop_last=True, **common)
    val_dl = TokenLoader(val, min(cfg.batch_size, len(val)), shuffle=False, drop_last=False, rewind=True, **common)
    if cfg.debug:
        print_debug(train, tokenizer, cfg, dropped=dropped)
    return train_dl, val_dl


def from_sft_strings(samples: list[dict], tokenizer=None, cfg: SFTDataConfig | None = None):
    """From a list of dicts in memory (any supported schema, mixed)."""
    return build_loaders(samples, tokenizer, cfg or SFTDataConfig(tokenizer=tokenizer), source="samples")


def read_json_samples(path: str | os.PathLike) -> list[dict]:
    """Samples of a ``.json`` file (a list, or ``{"data": [...]}``) or a ``.jsonl`` file (one per line)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"SFT data file not found: {path}")
    with open(path, encoding="utf-8") as f:
        if path.endswith(".jsonl"):
            samples = []
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        samples.append(json.loads(line))
                    except json.JSONDecodeError as e:
                        raise ValueError(f"{path}, line {n}: not valid JSON ({e.msg}); each line of a .jsonl file "
                                         "must be one JSON object") from None
            return samples
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {e.lineno}: not valid JSON ({e.msg})") from None
    if isinstance(data, dict) and isinstance(data.get("data"), list):
        data = data["data"]
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a JSON list of samples (or one sample per line in a .jsonl file)")
    return data


def from_sft_json(path: str | os.PathLike, tokenizer=None, cfg: SFTDataConfig | None = None):
    """From one ``.json`` or ``.jsonl`` file."""
    return build_loaders(read_json_samples(path), tokenizer, cfg or SFTDataConfig(tokenizer=tokenizer),
                         source=os.fspath(path))


def from_sft_files(paths: list[str | os.PathLike], tokenizer=None, cfg: SFTDataConfig | None = None):
    """From several ``.json`` / ``.jsonl`` files, concatenated."""
    samples = [s for p in paths for s in read_json_samples(p)]
    return build_loaders(samples, tokenizer, cfg or SFTDataConfig(tokenizer=tokenizer),
                         source=", ".join(map(os.fspath, paths)))


def from_sft_hf(dataset_name: str, tokenizer=None, cfg: SFTDataConfig | None = None, split_name: str = "train",
                config_name: str | None = None):
    """From a Hugging Face dataset: a Hub name, a ``save_to_disk`` folder, or local data files."""
    from ..data.hf import load_hf

    ds = load_hf(dataset_name, split_name=split_name, config_name=config_name, streaming=False)
    return build_loaders(iter(ds), tokenizer, cfg or SFTDataConfig(tokenizer=tokenizer), source=dataset_name)

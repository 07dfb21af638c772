"""Preference pairs as batches, and the loaders that build them.

A batch of N pairs is one dict of 2N rows, the N chosen rows first, then the N rejected ones in
the same order, so chosen and rejected go through one forward:

    input_ids, labels   (2N, T) int64: each row's x and y (y is x shifted by one), padded to the
                        batch's longest row with the pad id
    loss_mask           (2N, T) float: 1 on the response targets (what DPO sums log-probs over)
    pair_index          (N,) int64: which pairs (``offset`` + their index in the dataset; train and
                        val pairs of one source have distinct indices)
    ref_logps           (2N,) float: the data's reference log-probs, when every pair has them

Order, sharding by rank and exact resume are the pretraining loader's (``TokenLoader``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterable

import numpy as np
import torch

from ..data.loader import TokenLoader
from .config import PreferenceDataConfig
from .data import Pair, Skipped, render_pair


class PreferencePairs:
    """A map-style dataset of ``Pair`` with a batched ``__getitems__`` (read by ``TokenLoader``)."""

    def __init__(self, pairs: list[Pair], seq_len: int, pad_id: int, offset: int = 0):
        self.pairs, self.seq_len, self.pad_id, self.offset = pairs, seq_len, pad_id, offset
        self.has_ref = bool(pairs) and all(p.ref is not None for p in pairs)

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, i: int):
        return self.__getitems__([i])

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        pairs = [self.pairs[int(i)] for i in indices]
        rows = [(p.chosen_ids, p.chosen_mask) for p in pairs] + [(p.rejected_ids, p.rejected_mask) for p in pairs]
        n = max(len(ids) for ids, _ in rows)
        ids = np.full((len(rows), n), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), n), dtype=bool)
        for r, (i, m) in enumerate(rows):
            ids[r, :len(i)], mask[r, :len(m)] = i, m
        ids, mask = torch.from_numpy(ids), torch.from_numpy(mask)
        batch = {"input_ids": ids[:, :-1], "labels": ids[:, 1:], "loss_mask": mask[:, 1:].float(),
                 "pair_index": torch.as_tensor([self.offset + int(i) for i in indices], dtype=torch.long)}
        if self.has_ref:
            ref = [p.ref[0] for p in pairs] + [p.ref[1] for p in pairs]
            batch["ref_logps"] = torch.tensor(ref, dtype=torch.float32)
        return batch


def render_pairs(samples: Iterable, tokenizer, cfg: PreferenceDataConfig, source: str) -> list[Pair]:
    """Every usable pair of ``samples``; skipped ones are counted in one warning (an error when none is left)."""
    skipped, pairs, total = Skipped(), [], 0
    for i, sample in enumerate(samples):
        total += 1
        pair = render_pair(sample, i, tokenizer, cfg.template, cfg.strings, cfg.seq_len + 1, skipped)
        if pair is not None:
            pairs.append(pair)
    if total == 0:
        raise ValueError(f"{source}: no preference samples found")
    if skipped.total():
        msg = (f"{source}: skipped {skipped.total()} of {total} preference samples: {skipped.describe()} "
               f"(e.g. sample {', '.join(map(str, skipped.examples))})")
        if not pairs:
            raise ValueError(msg + "; nothing left to train on. Fix the data or raise seq_len")
        warnings.warn(msg, stacklevel=3)
    if skipped.truncated:
        warnings.warn(f"{source}: {skipped.truncated} pairs are longer than seq_len={cfg.seq_len}; their responses "
                      "are cut to fit (raise seq_len to train them whole)", stacklevel=3)
    return pairs


def build_preference_loaders(samples: Iterable, tokenizer, cfg: PreferenceDataConfig, source: str = "samples",
                             val_samples: Iterable | None = None):
    """``(train_dl, val_dl)`` over the rendered pairs: ``cfg.split`` of them train, the rest are
    val (None when ``split`` is 1), or with ``val_samples`` all of ``samples`` train and those are val."""
    tokenizer = tokenizer if tokenizer is not None else cfg.tokenizer
    if tokenizer is None:
        raise ValueError("no tokenizer: pass one to the loader or set PreferenceDataConfig(tokenizer=...)")
    pairs = render_pairs(samples, tokenizer, cfg, source)
    order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(cfg.seed)).tolist()
    if val_samples is not None:
        val_pairs = render_pairs(val_samples, tokenizer, cfg, f"{source} (val)")
        order, pairs = order + list(range(len(pairs), len(pairs) + len(val_pairs))), pairs + val_pairs
        n_train = len(pairs) - len(val_pairs)
    else:
        n_train = len(pairs) if cfg.split >= 1.0 else min(len(pairs) - 1, max(1, round(len(pairs) * cfg.split)))
    if n_train < 1:
        raise ValueError(f"{source}: {len(pairs)} usable pair(s); need at least 2 to split into train and val, "
                         "or split=1.0 for no val pairs")
    pad = next((v for v in (cfg.pad_id, getattr(tokenizer, "pad_id", None), cfg.eos_id,
                            getattr(tokenizer, "eos_id", None)) if v is not None), 0)
    common = dict(seed=cfg.seed, num_workers=cfg.num_workers, pin_memory=cfg.pin_memory)
    train = PreferencePairs([pairs[i] for i in order[:n_train]], cfg.seq_len, pad)
    train_dl = TokenLoader(train, min(cfg.batch_size, len(train)), shuffle=cfg.shuffle, drop_last=True, **common)
    if n_train == len(pairs):
        return train_dl, None
    val = PreferencePairs([pairs[i] for i in order[n_train:]], cfg.seq_len, pad, offset=n_train)
    return train_dl, TokenLoader(val, min(cfg.batch_size, len(val)), shuffle=False, drop_last=False, rewind=True,
                                 **common)


def from_preference_samples(samples: list[dict], tokenizer=None, cfg: PreferenceDataConfig | None = None,
                            val_samples: list[dict] | None = None):
    """From a list of samples in memory (any of TRL's preference formats); ``val_samples``: a
    held-out list to evaluate on (else ``cfg.split`` divides ``samples``)."""
    return build_preference_loaders(samples, tokenizer, cfg or PreferenceDataConfig(tokenizer=tokenizer),
                                    val_samples=val_samples)


def from_preference_json(path: str | os.PathLike, tokenizer=None, cfg: PreferenceDataConfig | None = None):
    """From a ``.json`` (a list) or ``.jsonl`` (one sample per line) file."""
    from ..sft.loaders import read_json_samples

    return build_preference_loaders(read_json_samples(path), tokenizer,
                                    cfg or PreferenceDataConfig(tokenizer=tokenizer), source=os.fspath(path))


def from_preference_hf(dataset_name: str, tokenizer=None, cfg: PreferenceDataConfig | None = None,
                       split_name: str = "train", config_name: str | None = None):
    """From a Hugging Face dataset (a Hub name, a ``save_to_disk`` folder or local data files)."""
    from ..data.hf import load_hf

    ds = load_hf(dataset_name, split_name=split_name, config_name=config_name, streaming=False)
    return build_preference_loaders(iter(ds), tokenizer, cfg or PreferenceDataConfig(tokenizer=tokenizer),
                                    source=dataset_name)

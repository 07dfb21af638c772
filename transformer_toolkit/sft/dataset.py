"""Rendered conversations as rows of ``seq_len + 1`` tokens: one per row, or packed.

A row's inputs are ``x = row[:-1]`` and targets ``y = row[1:]``; ``loss_mask[t]`` is the mask
bit of target ``y[t]``. Padding has mask 0. Packed rows also carry ``doc_ids`` (one id per
conversation, -1 for padding): the model attends only within a conversation and restarts
positions at each one, and a target that belongs to the next conversation is never trained.
"""

from __future__ import annotations

import numpy as np
import torch

from .render import Rendered


class SFTRows:
    """A map-style dataset of rows with a batched ``__getitems__`` (used by TokenLoader)."""

    def __init__(self, samples: list[Rendered], seq_len: int, pad_id: int, packing: bool = False):
        self.seq_len, self.pad_id, self.packing = seq_len, pad_id, packing
        row_len = seq_len + 1
        if any(len(s) > row_len for s in samples):
            raise ValueError(f"a rendered sample is longer than seq_len + 1 = {row_len}; truncate first")
        self.ids = np.concatenate([s.ids for s in samples]).astype(np.int64) if samples else np.zeros(0, np.int64)
        self.mask = np.concatenate([s.mask for s in samples]) if samples else np.zeros(0, bool)
        bounds = np.cumsum([0] + [len(s) for s in samples])
        self.starts, self.ends = bounds[:-1], bounds[1:]
        # rows: lists of sample indices; greedy in order keeps packing a pure function of the data
        self.rows: list[list[int]] = []
        if packing:
            used = row_len
            for i, n in enumerate(self.ends - self.starts):
                if used + n > row_len:
                    self.rows.append([])
                    used = 0
                self.rows[-1].append(i)
                used += n
        else:
            self.rows = [[i] for i in range(len(samples))]

    def __len__(self) -> int:
        return len(self.rows)

    def row(self, r: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(ids, mask, doc) of row ``r``, each ``seq_len + 1`` long."""
        n = self.seq_len + 1
        ids = np.full(n, self.pad_id, np.int64)
        mask = np.zeros(n, bool)
        doc = np.full(n, -1, np.int64)
        pos = 0
        for d, i in enumerate(self.rows[r]):
            a, b = self.starts[i], self.ends[i]
            ids[pos:pos + b - a] = self.ids[a:b]
            mask[pos:pos + b - a] = self.mask[a:b]
            doc[pos:pos + b - a] = d
            pos += b - a
        return ids, mask, doc

    def __getitem__(self, r: int):
        return self.__getitems__([r])

    def __getitems__(self, rows) -> tuple[torch.Tensor, ...]:
        parts = [self.row(int(r)) for r in rows]
        ids = torch.from_numpy(np.stack([p[0] for p in parts]))
        mask = torch.from_numpy(np.stack([p[1] for p in parts]))
        doc = torch.from_numpy(np.stack([p[2] for p in parts]))
        x, y = ids[:, :-1], ids[:, 1:]
        loss_mask = mask[:, 1:] & (doc[:, 1:] == doc[:, :-1])  # never train across a document edge
        if not self.packing:
            return x, y, loss_mask.float()
        return x, y, loss_mask.float(), doc[:, :-1]

    def padding_fraction(self) -> float:
        used = int((self.ends - self.starts).sum())
        return 1.0 - used / max(1, len(self.rows) * (self.seq_len + 1))

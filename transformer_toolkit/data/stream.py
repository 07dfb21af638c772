"""Streaming pretraining batches straight from a document stream (a Hugging Face dataset).

Documents are tokenised in batches and concatenated; the stream is cut into ``seq_len + 1``
token windows at ``stride`` (default ``seq_len``: each token is a target once) and batched.
Everything is deterministic: document ``i`` belongs to val when ``i % 1000 >= split * 1000``;
within a split, document ``j`` goes to shard ``j % n_shards`` where the shards are
``(rank, DataLoader worker)``; the optional shuffle permutes blocks of windows with a generator
seeded by ``(seed, epoch, shard)``. Each worker reads the whole stream and keeps its own
documents, so the order does not depend on how the dataset happens to be stored in files.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from .loader import dist_rank_world, epoch_generator

SPLIT_PERIOD = 1000
DOCS_PER_CALL = 64  # documents per encode_batch call
SHUFFLE_TOKENS = 1 << 22  # tokens held in the shuffle block per worker (~32 MB as int64)


def is_val_doc(i: int, split: float) -> bool:
    return i % SPLIT_PERIOD >= round(split * SPLIT_PERIOD)


class StreamWindows(IterableDataset):
    """Yields ready batches ``(x, y)`` (int64 ``[B, seq_len]``) from a stream of documents."""

    def __init__(self, docs, tokenizer, text_col: str, seq_len: int, batch_size: int, *, stride: int | None = None,
                 split: float = 0.9, val: bool = False, shuffle: bool = False, drop_last: bool = True,
                 seed: int = 0, bos_id: int | None = None, eos_id: int | None = None, rank: int = 0,
                 world_size: int = 1):
        self.docs, self.tokenizer, self.text_col = docs, tokenizer, text_col
        self.seq_len, self.batch_size = seq_len, batch_size
        self.stride = seq_len if stride is None else stride
        self.split, self.val, self.shuffle, self.drop_last = split, val, shuffle, drop_last
        self.seed, self.bos_id, self.eos_id = seed, bos_id, eos_id
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        self.block = max(batch_size, SHUFFLE_TOKENS // (seq_len + 1) // batch_size * batch_size)

    def _shard(self) -> tuple[int, int]:
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info is not None else (0, 1)
        return self.rank * nw + wid, self.world_size * nw

    def _my_texts(self):
        """This shard's documents of this split, in stream order."""
        shard, n_shards = self._shard()
        i = j = 0
        for batch in self.docs.iter(batch_size=256):
            if self.text_col not in batch:
                raise ValueError(f"the streamed dataset has no column {self.text_col!r}; its columns are "
                                 f"{list(batch)}: pass text_col=")
            for text in batch[self.text_col]:
                if is_val_doc(i, self.split) == self.val:
                    if j % n_shards == shard and text:
                        if not isinstance(text, str):
                            raise ValueError(f"column {self.text_col!r} must hold text, got {type(text).__name__} "
                                             f"in document {i}; pass text_col= naming a text column")
                        yield text
                    j += 1
                i += 1

    def _token_groups(self):
        texts = []
        for text in self._my_texts():
            texts.append(text)
            if len(texts) == DOCS_PER_CALL:
                yield self._encode(texts)
                texts = []
        if texts:
            yield self._encode(texts)

    def _encode(self, texts: list[str]) -> np.ndarray:
        parts = []
        for ids in self.tokenizer.encode_batch(texts):
            if self.bos_id is not None:
                parts.append([self.bos_id])
            parts.append(ids)
            if self.eos_id is not None:
                parts.append([self.eos_id])
        return np.concatenate([np.asarray(p, dtype=np.int64) for p in parts])

    def _windows(self):
        """Arrays of windows ``[k, seq_len + 1]`` as the token stream grows."""
        buf = np.zeros(0, dtype=np.int64)
        offsets = np.arange(self.seq_len + 1)
        for ids in self._token_groups():
            buf = np.concatenate([buf, ids])
            k = max(0, (len(buf) - self.seq_len - 1) // self.stride + 1)
            if k:
                yield buf[(np.arange(k) * self.stride)[:, None] + offsets]
                buf = buf[k * self.stride:]

    def __iter__(self):
        shard, _ = self._shard()
        gen = epoch_generator(self.seed, self.epoch, shard)
        pending = np.zeros((0, self.seq_len + 1), dtype=np.int64)
        for rows in self._windows():
            pending = np.concatenate([pending, rows])
            if len(pending) >= self.block:
                yield from self._emit(pending[: self.block], gen)
                pending = pending[self.block:]
        yield from self._emit(pending, gen, last=True)

    def _emit(self, rows: np.ndarray, gen: torch.Generator, last: bool = False):
        if self.shuffle:
            rows = rows[torch.randperm(len(rows), generator=gen).numpy()]
        B = self.batch_size
        end = len(rows) if last and not self.drop_last else len(rows) // B * B
        for a in range(0, end, B):
            t = torch.from_numpy(rows[a:a + B])
            yield t[:, :-1].contiguous(), t[:, 1:].contiguous()


class StreamLoader:
    """The streaming counterpart of :class:`TokenLoader`: same ``state_dict`` and resume, no ``len``.

    Resuming skips the batches already consumed this epoch (they are re-read and dropped:
    exact, at the cost of re-tokenising them). When the stream ends the next ``iter`` starts a
    new epoch (a new shuffle of the same documents).
    """

    def __init__(self, dataset: StreamWindows, num_workers: int = 0, pin_memory: bool = False):
        self.dataset = dataset
        self.batch_size = dataset.batch_size
        self.seq_len = dataset.seq_len
        self.num_workers = num_workers
        self.epoch, self.batch = 0, 0
        # workers are not persistent: each epoch re-sends the dataset with its new epoch number
        self._dl = DataLoader(dataset, batch_size=None, num_workers=num_workers,
                              pin_memory=pin_memory and torch.cuda.is_available())

    def __len__(self) -> int:
        raise TypeError("a streaming loader has no length (the stream's size is unknown); count steps instead")

    def __iter__(self):
        self.dataset.epoch = self.epoch
        skip = self.batch
        for k, xy in enumerate(self._dl):
            if k < skip:
                continue
            self.batch += 1
            yield xy
        self.epoch, self.batch = self.epoch + 1, 0

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])

    def first_batch(self):
        """A preview batch read in this process (the loader's position does not move)."""
        try:
            return next(iter(self.dataset))
        except StopIteration:
            raise ValueError(f"the stream gave no batch: fewer than batch_size={self.batch_size} windows of "
                             f"seq_len+1={self.seq_len + 1} tokens; use a smaller batch_size or seq_len") from None


def stream_loaders(docs, tokenizer, cfg, text_col: str, bos_id=None, eos_id=None, rank=None, world_size=None):
    """``(train_dl, val_dl)`` streaming from ``docs`` (anything with ``.iter(batch_size)`` of column dicts)."""
    if rank is None or world_size is None:
        rank, world_size = dist_rank_world()
    common = dict(stride=cfg.stride, split=cfg.split, seed=cfg.seed, bos_id=bos_id, eos_id=eos_id, rank=rank,
                  world_size=world_size)
    train = StreamWindows(docs, tokenizer, text_col, cfg.seq_len, cfg.batch_size, val=False, shuffle=cfg.shuffle,
                          drop_last=cfg.drop_last, **common)
    val = StreamWindows(docs, tokenizer, text_col, cfg.seq_len, cfg.batch_size, val=True, shuffle=False,
                        drop_last=False, **common)
    return (StreamLoader(train, cfg.num_workers, cfg.pin_memory), StreamLoader(val, cfg.num_workers, cfg.pin_memory))

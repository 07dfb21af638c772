"""Windows over a token file, a deterministic resumable batch order, and the loader the Trainer reads.

Window ``i`` covers ``tokens[i*stride : i*stride + seq_len + 1]``; ``x`` is its first ``seq_len``
tokens and ``y`` its last ``seq_len`` (the next-token targets). The order of epoch ``e`` is a
permutation drawn from a generator seeded with ``(seed, e)`` in the main process, so a run that
saved ``{"epoch", "batch"}`` continues with exactly the batches it had not seen.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from .tokens import TokenSpec


def n_windows(n_tokens: int, seq_len: int, stride: int) -> int:
    """How many full ``seq_len + 1`` windows fit in ``n_tokens`` at this stride."""
    return max(0, (n_tokens - seq_len - 1) // stride + 1)


def identity_collate(batch):
    """``__getitems__`` already returns the batch ``(x, y)``; module-level so workers can pickle it."""
    return batch


class TokenWindows(Dataset):
    """``(x, y)`` next-token windows over a token file, opened lazily in each process.

    Only the :class:`TokenSpec` (path, offset, dtype, view) is stored, so the dataset pickles
    to DataLoader workers cheaply and each process maps the file itself on first access.
    """

    def __init__(self, spec: TokenSpec, seq_len: int, stride: int | None = None):
        self.spec = spec
        self.seq_len = seq_len
        self.stride = seq_len if stride is None else stride
        self._tokens = None
        self._pid = None
        self._offsets = np.arange(seq_len + 1, dtype=np.int64)

    def __len__(self) -> int:
        return n_windows(self.spec.length, self.seq_len, self.stride)

    @property
    def tokens(self) -> np.ndarray:
        if self._tokens is None or self._pid != os.getpid():
            self._tokens, self._pid = self.spec.open(), os.getpid()
        return self._tokens

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_tokens"] = state["_pid"] = None  # never pickle the mapped array itself
        return state

    def __getitem__(self, i: int):
        x, y = self.__getitems__([i])
        return x[0], y[0]

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        """One vectorised gather for the whole batch: ``x, y`` int64 ``[B, seq_len]``."""
        idx = np.asarray(indices, dtype=np.int64)
        if idx.size and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"window index out of range [0, {len(self)})")
        rows = self.tokens[(idx * self.stride)[:, None] + self._offsets]  # [B, seq_len + 1]
        if self.spec.max_id is not None and rows.size and int(rows.max()) > self.spec.max_id:
            # the vocabulary check trusted the header's max_id instead of scanning the file
            raise ValueError(f"{self.spec.path!r} holds token id {int(rows.max())} although its header says "
                             f"the largest is {self.spec.max_id}: the file is damaged or was not written by "
                             "save_binary; tokenize the text again (ttk prepare)")
        rows = torch.from_numpy(rows.astype(np.int64))
        return rows[:, :-1].contiguous(), rows[:, 1:].contiguous()


def epoch_generator(seed: int, epoch: int, *more: int) -> torch.Generator:
    """A torch generator that depends only on ``(seed, epoch, *more)`` (well mixed, so epochs differ)."""
    state = np.random.SeedSequence([seed, epoch, *more]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 31 | int(state[1]) >> 1)


class EpochBatchSampler(Sampler):
    """Batches of window indices; epoch ``e``'s order is a pure function of ``(seed, e)``.

    With ``world_size > 1`` rank ``r`` takes ``order[r::world_size]`` of an order cut (train) or
    wrapped (eval) to a multiple of ``world_size``, so every rank runs the same number of steps.
    ``set_position(epoch, batch)`` picks where the next ``iter`` starts.
    """

    def __init__(self, n: int, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int = 0,
                 rank: int = 0, world_size: int = 1):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
        self.n, self.batch_size, self.shuffle, self.drop_last = n, batch_size, shuffle, drop_last
        self.seed, self.rank, self.world_size = seed, rank, world_size
        self.epoch, self.start = 0, 0

    def set_position(self, epoch: int, batch: int) -> None:
        self.epoch, self.start = epoch, batch

    def indices(self, epoch: int) -> torch.Tensor:
        """This rank's window indices for ``epoch``, in order."""
        order = torch.randperm(self.n, generator=epoch_generator(self.seed, epoch)) if self.shuffle \
            else torch.arange(self.n)
        if self.world_size > 1:
            if self.drop_last:
                order = order[: self.n - self.n % self.world_size]
            elif self.n % self.world_size and self.n:
                target = self.per_rank() * self.world_size  # repeat a few so every rank has equal work
                order = order.repeat(-(-target // self.n))[:target]
            order = order[self.rank:: self.world_size]
        return order

    def per_rank(self) -> int:
        w = self.world_size
        return self.n // w if self.drop_last else -(-self.n // w)

    def __len__(self) -> int:
        m = self.per_rank()
        return m // self.batch_size if self.drop_last else -(-m // self.batch_size)

    def __iter__(self):
        order = self.indices(self.epoch)
        for b in range(self.start, len(self)):
            yield order[b * self.batch_size:(b + 1) * self.batch_size].tolist()


def dist_rank_world() -> tuple[int, int]:
    """``(rank, world_size)`` of the default process group, ``(0, 1)`` without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class TokenLoader:
    """An iterable of ``(x, y)`` batches with an exact, resumable position.

    ``len()`` is the number of batches per epoch (on this rank). Iterating again after an epoch
    completes starts the next epoch with a new permutation; iterating again after a ``break``
    continues with the next unseen batch. ``state_dict()`` counts the batches the consumer has
    received (DataLoader workers prefetch ahead, so the sampler cannot know).
    ``rewind=True`` (the val loader) makes every iteration start at the first batch instead, so
    each evaluation sees the same windows.
    """

    def __init__(self, dataset: TokenWindows, batch_size: int, *, shuffle: bool = True, drop_last: bool = True,
                 seed: int = 0, num_workers: int = 0, pin_memory: bool = False, rewind: bool = False,
                 rank: int | None = None, world_size: int | None = None):
        if rank is None or world_size is None:
            rank, world_size = dist_rank_world()
        self.dataset = dataset
        self.batch_size = batch_size
        self.seq_len = dataset.seq_len
        self.sampler = EpochBatchSampler(len(dataset), batch_size, shuffle=shuffle, drop_last=drop_last, seed=seed,
                                         rank=rank, world_size=world_size)
        self.epoch, self.batch = 0, 0
        self.rewind = rewind
        self._dl = DataLoader(dataset, batch_sampler=self.sampler, collate_fn=identity_collate,
                              num_workers=num_workers, persistent_workers=num_workers > 0,
                              pin_memory=pin_memory and torch.cuda.is_available())

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self):
        if self.rewind:
            self.epoch, self.batch = 0, 0
        elif self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        self.sampler.set_position(self.epoch, self.batch)
        for xy in self._dl:
            self.batch += 1
            yield xy

    def state_dict(self) -> dict[str, int]:
        """``{"epoch", "batch"}``: the next batch to deliver is ``batch`` of ``epoch``."""
        if self.batch >= len(self):
            return {"epoch": self.epoch + 1, "batch": 0}
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        epoch, batch = int(state["epoch"]), int(state["batch"])
        if epoch < 0 or not 0 <= batch <= len(self):
            raise ValueError(f"loader state {state} is out of range: this loader has {len(self)} batches per epoch; "
                             "was it saved with another batch_size, seq_len or dataset?")
        self.epoch, self.batch = epoch, batch

    def first_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The first batch of the current epoch, read directly (does not move the position)."""
        return self.dataset.__getitems__(self.sampler.indices(self.epoch)[: self.batch_size].tolist())

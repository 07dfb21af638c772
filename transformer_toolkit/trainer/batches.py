"""Training batches as an endless, resumable stream over any iterable of batches.

A batch is ``(x, y)``, ``(x, y, loss_mask)`` or ``(x, y, loss_mask, doc_ids)`` (a tuple/list),
or a dict with ``input_ids``, ``labels`` and optionally ``loss_mask`` / ``doc_ids`` (other keys
are kept in ``Batch.extra`` for a Trainer subclass, e.g. DPO's reference log-probs): x and y are
``(B, T)`` integer tensors (y is x shifted by one), loss_mask is ``(B, T)`` float/bool with 1 on
the tokens that are trained, doc_ids ``(B, T)`` numbers the documents of a packed SFT row (the
model then attends within each document only).

Data loading has its own torch RNG stream: around every fetch the global CPU RNG is swapped for
the stream's state. A ``DataLoader`` draws from the global RNG each time it is iterated (a shuffle
order, worker seeds); with the swap those draws never shift the model's stream (dropout), so the
training trajectory does not depend on when the loader happens to be re-iterated.

Resuming a position inside an epoch:

- a loader with ``state_dict()`` / ``load_state_dict()`` (the ``transformer_toolkit.data``
  loaders) is asked for its own position: exact and instant;
- any other iterable (a plain ``DataLoader``, a list) is re-iterated from the start of the
  epoch and the batches already consumed are skipped. The data RNG state at the moment the
  epoch's iterator was created is saved, so a shuffled ``DataLoader`` replays the same order.
  Skipping reads the skipped batches, which takes time on a long epoch.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor


class Batch(NamedTuple):
    x: Tensor
    y: Tensor
    loss_mask: Tensor | None = None
    doc_ids: Tensor | None = None
    extra: dict[str, Tensor] | None = None  # a dict batch's other tensors, for a subclass's compute_loss

    def to(self, device: torch.device) -> Batch:
        nb = device.type == "cuda"  # overlap the copy with compute (pinned memory)
        move = lambda t: t.to(device, non_blocking=nb) if isinstance(t, Tensor) else t  # noqa: E731
        extra = {k: move(v) for k, v in self.extra.items()} if self.extra else None
        return Batch(*(move(t) for t in self[:4]), extra)


BATCH_KEYS = ("input_ids", "labels", "loss_mask", "doc_ids")


def unpack(batch) -> Batch:
    """A ``Batch`` from any supported batch layout."""
    if isinstance(batch, dict):
        extra = {k: v for k, v in batch.items() if k not in BATCH_KEYS} or None
        try:
            return Batch(batch["input_ids"], batch["labels"], batch.get("loss_mask"), batch.get("doc_ids"), extra)
        except KeyError as e:
            raise ValueError(f"a dict batch needs 'input_ids' and 'labels' (and optionally 'loss_mask', 'doc_ids'); "
                             f"got keys {sorted(batch)}") from e
    if isinstance(batch, (tuple, list)) and 2 <= len(batch) <= 4:
        return Batch(*batch)
    raise ValueError(f"a batch must be (x, y), (x, y, loss_mask), (x, y, loss_mask, doc_ids) or a dict with "
                     f"input_ids/labels; got {type(batch).__name__} of length "
                     f"{len(batch) if hasattr(batch, '__len__') else '?'}")


def check_batch(batch: Batch, max_seq: int | None, vocab: int) -> None:
    """Fail on the first batch with a message that says what is wrong, not deep inside the model."""
    x, y, mask, doc_ids = batch[:4]
    if not (isinstance(x, Tensor) and isinstance(y, Tensor)):
        raise ValueError(f"batch x and y must be tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.dim() != 2 or x.shape != y.shape:
        raise ValueError(f"batch x and y must both be (batch, seq_len); got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype.is_floating_point or y.dtype.is_floating_point:
        raise ValueError(f"batch x and y must hold integer token ids, got {x.dtype} and {y.dtype}")
    for name, t in (("loss_mask", mask), ("doc_ids", doc_ids)):
        if t is not None and t.shape != x.shape:
            raise ValueError(f"{name} must have the shape of x {tuple(x.shape)}, got {tuple(t.shape)}")
    if max_seq is not None and x.shape[1] > max_seq:
        raise ValueError(f"batches have seq_len {x.shape[1]} > the model's max_seq {max_seq}; "
                         f"use DataConfig(seq_len<={max_seq}) or a model with a larger max_seq")
    top = int(x.max()) if x.numel() else 0
    if top >= vocab:
        raise ValueError(f"batch holds token id {top} but vocab_size is {vocab}; the tokenizer and the "
                         "model's vocab_size do not match")


def is_stateful(loader) -> bool:
    """Whether ``loader`` saves and restores its own position (``state_dict``/``load_state_dict``)."""
    return callable(getattr(loader, "state_dict", None)) and callable(getattr(loader, "load_state_dict", None))


class BatchStream:
    """``next()`` yields training batches forever, epoch after epoch, with a resumable position."""

    def __init__(self, loader: Iterable, seed: int = 0):
        self.loader = loader
        self.stateful = is_stateful(loader)
        self.epoch, self.consumed = 0, 0
        self._it = None
        self._epoch_rng: Tensor | None = None
        self.seed(seed)

    def seed(self, seed: int) -> None:
        self.rng = torch.Generator().manual_seed(seed).get_state()

    def next(self):
        outer = torch.get_rng_state()
        torch.set_rng_state(self.rng)
        try:
            return self._next()
        finally:
            self.rng = torch.get_rng_state()
            torch.set_rng_state(outer)

    def _next(self):
        for _ in range(2):
            if self._it is None:
                self._start_epoch()
            try:
                batch = next(self._it)
            except StopIteration:
                self._it = None
                if self.consumed == 0:
                    break
                self.epoch, self.consumed = self.epoch + 1, 0
                continue
            self.consumed += 1
            return batch
        raise ValueError("train_dl yielded no batches: the training split is smaller than one batch "
                         "(lower batch_size or seq_len, or use more data)")

    def _start_epoch(self) -> None:
        self._epoch_rng = None if self.stateful else torch.get_rng_state()
        set_epoch = getattr(getattr(self.loader, "sampler", None), "set_epoch", None)
        if callable(set_epoch) and not self.stateful:
            set_epoch(self.epoch)  # a DistributedSampler reshuffles per epoch only when told the epoch
        self._it = iter(self.loader)

    def state_dict(self) -> dict:
        state = {"epoch": self.epoch, "consumed": self.consumed, "rng": self.rng}
        if self.stateful:
            state["loader"] = self.loader.state_dict()
        else:
            state["epoch_rng"] = self._epoch_rng
        return state

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.consumed = int(state["epoch"]), int(state["consumed"])
        if self.stateful and "loader" in state:
            self.loader.load_state_dict(state["loader"])
            self._it = None
            self.rng = state["rng"]
            return
        # Replay the epoch from its start, with the data RNG as it was when the epoch began.
        outer = torch.get_rng_state()
        if state.get("epoch_rng") is not None:
            torch.set_rng_state(state["epoch_rng"])
        self._start_epoch()
        try:
            for _ in range(self.consumed):
                next(self._it)
        except StopIteration:
            raise ValueError(f"cannot resume: train_dl now has fewer than the {self.consumed} batches per epoch "
                             "the checkpoint had consumed; was the data or batch size changed?") from None
        finally:
            torch.set_rng_state(outer)
        self.rng = state["rng"]

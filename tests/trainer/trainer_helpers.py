"""Helpers of the trainer tests: a tiny model, a deterministic resumable loader, configs.

(Kept out of conftest.py: several test folders have one, so ``from conftest import`` is ambiguous.)

``ToyLoader`` has the interface of the ``transformer_toolkit.data`` loaders (``len``,
``state_dict`` / ``load_state_dict``, next epoch on re-iteration) over an in-memory token
tensor, so these tests do not depend on the data package. With ``world_size > 1`` rank r takes
the r-th slice of every global batch: the ranks of one step together see exactly the samples a
single process with ``batch_size * world_size`` sees.
"""

from __future__ import annotations

from pathlib import Path

import torch

from transformer_toolkit.model import Transformer, TransformerConfig
from transformer_toolkit.trainer import TrainConfig

VOCAB, SEQ = 64, 16


def tiny_model(**overrides) -> Transformer:
    base = dict(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=4, max_seq=SEQ, hidden_dim=64)
    base.update(overrides)
    return Transformer(TransformerConfig(**base))


def pattern_tokens(n: int = 6000, seed: int = 0) -> torch.Tensor:
    """A learnable stream: noisy repetitions of a random 'vocabulary' of short phrases."""
    g = torch.Generator().manual_seed(seed)
    phrases = torch.randint(0, VOCAB, (12, 7), generator=g)
    picks = torch.randint(0, len(phrases), (n // 7 + 1,), generator=g)
    return phrases[picks].flatten()[:n]


class ToyLoader:
    def __init__(self, tokens: torch.Tensor, batch_size: int, seq_len: int = SEQ, *, seed: int = 0,
                 shuffle: bool = True, rank: int = 0, world_size: int = 1, mask_fn=None):
        self.tokens, self.batch_size, self.seq_len = tokens, batch_size, seq_len
        self.seed, self.shuffle, self.rank, self.world_size = seed, shuffle, rank, world_size
        self.mask_fn = mask_fn  # (x, y) -> loss_mask, for SFT-style batches
        self.n_windows = (len(tokens) - 1) // seq_len
        self.epoch, self.batch = 0, 0

    def __len__(self) -> int:
        return self.n_windows // (self.batch_size * self.world_size)

    def _order(self, epoch: int) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.n_windows)
        return torch.randperm(self.n_windows, generator=torch.Generator().manual_seed(self.seed * 1000 + epoch))

    def __iter__(self):
        if self.batch >= len(self):
            self.epoch, self.batch = self.epoch + 1, 0
        order, B, W, T = self._order(self.epoch), self.batch_size, self.world_size, self.seq_len
        while self.batch < len(self):
            start = self.batch * B * W + self.rank * B
            idx = order[start:start + B]
            x = torch.stack([self.tokens[i * T:i * T + T] for i in idx])
            y = torch.stack([self.tokens[i * T + 1:i * T + T + 1] for i in idx])
            self.batch += 1
            yield (x, y) if self.mask_fn is None else (x, y, self.mask_fn(x, y))

    def state_dict(self) -> dict:
        if self.batch >= len(self):
            return {"epoch": self.epoch + 1, "batch": 0}
        return {"epoch": self.epoch, "batch": self.batch}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.batch = int(state["epoch"]), int(state["batch"])


def make_cfg(tmp_path, **overrides) -> TrainConfig:
    """A fast config: fp32, no plot, quiet, checkpoints under tmp_path."""
    tmp_path = Path(tmp_path)
    base = dict(max_steps=12, eval_every=6, save_every=6, log_every=3, warmup_steps=3, lr=3e-3, min_lr=3e-4,
                grad_accum_steps=1, mixed_precision=False, eval_iters=4, ckpt_dir=str(tmp_path / "ckpt"),
                plot=False, progress="none", interruptible=False)
    base.update(overrides)
    return TrainConfig(**base)


def loaders(batch_size: int = 8, seed: int = 0, **kw) -> tuple[ToyLoader, ToyLoader]:
    tokens = pattern_tokens()
    cut = int(len(tokens) * 0.9)
    return (ToyLoader(tokens[:cut], batch_size, seed=seed, **kw),
            ToyLoader(tokens[cut:], batch_size, shuffle=False, **{k: v for k, v in kw.items() if k != "mask_fn"}))

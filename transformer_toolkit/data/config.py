"""DataConfig: how token files become batches (window length, batch size, split, order, workers)."""

from __future__ import annotations

from pydantic import model_validator

from ..config_base import StrictConfig


class DataConfig(StrictConfig):
    """Settings of the pretraining loaders.

    >>> cfg = DataConfig(seq_len=128, batch_size=32)
    >>> cfg.window_stride
    128

    ``stride=None`` means ``stride=seq_len``: windows that do not overlap, so every token is a
    target exactly once per epoch. ``seed`` fixes the shuffle: the order of epoch ``e`` is a pure
    function of ``(seed, e)``, which is what makes a resumed run see exactly the batches it missed.
    ``pin_memory`` is honoured only when CUDA is available (pinning is meaningless on CPU).
    """

    seq_len: int
    batch_size: int
    split: float = 0.9
    stride: int | None = None
    shuffle: bool = True
    num_workers: int = 0
    pin_memory: bool = False
    streaming: bool = False
    debug: bool = False
    debug_n: int = 3
    seed: int = 0
    drop_last: bool = True

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.seq_len < 1:
            raise ValueError(f"seq_len must be >= 1, got {self.seq_len}; it is the number of tokens per sample")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.split < 1.0:
            raise ValueError(f"split must be strictly between 0 and 1 (the train fraction), got {self.split}; "
                             "e.g. split=0.9 keeps 90% of the tokens for training and 10% for validation")
        if self.stride is not None and self.stride < 1:
            raise ValueError(f"stride must be >= 1 or None (= seq_len, non-overlapping windows), got {self.stride}")
        if self.num_workers < 0:
            raise ValueError(f"num_workers must be >= 0 (0 = load in the main process), got {self.num_workers}")
        if self.debug_n < 1:
            raise ValueError(f"debug_n must be >= 1 (samples shown when debug=True), got {self.debug_n}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        return self

    @property
    def window_stride(self) -> int:
        """The stride actually used: ``stride`` or, when None, ``seq_len``."""
        return self.seq_len if self.stride is None else self.stride

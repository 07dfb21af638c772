"""DataConfig: how token files become batches (window length, batch size, split, order, workers)."""

from __future__ import annotations

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

    RANGES = {"seq_len": {"ge": 1, "hint": " (the number of tokens per sample)"}, "batch_size": {"ge": 1},
              "split": {"gt": 0, "lt": 1, "hint": " (the train fraction: split=0.9 keeps 90% of the "
                                                 "tokens for training and 10% for validation)"},
              "stride": {"ge": 1, "hint": " or None (= seq_len, non-overlapping windows)"},
              "num_workers": {"ge": 0, "hint": " (0 = load in the main process)"},
              "debug_n": {"ge": 1, "hint": " (samples shown when debug=True)"}, "seed": {"ge": 0}}

    @property
    def window_stride(self) -> int:
        """The stride actually used: ``stride`` or, when None, ``seq_len``."""
        return self.seq_len if self.stride is None else self.stride

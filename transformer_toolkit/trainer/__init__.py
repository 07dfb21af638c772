"""Training: ``TrainConfig``, the ``Trainer`` loop and its checkpoints (the format is
``store/checkpoint.py``; ``atomic_save``, ``latest_ckpt`` and ``load_ckpt`` are re-exported here).

>>> from transformer_toolkit.trainer import Trainer, TrainConfig, load_ckpt
"""

from ..store.checkpoint import atomic_save, latest_ckpt, load_ckpt
from .config import TrainConfig
from .distributed import DistInfo, init_distributed
from .loop import Trainer, TrainingDiverged
from .optim import build_optimizer, lr_at, param_groups
from .precision import Precision, cpu_has_native_bf16, resolve_precision

__all__ = [
    "DistInfo", "Precision", "TrainConfig", "Trainer", "TrainingDiverged", "atomic_save", "build_optimizer",
    "cpu_has_native_bf16", "init_distributed", "latest_ckpt", "load_ckpt", "lr_at", "param_groups",
    "resolve_precision",
]

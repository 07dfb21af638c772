"""TrainConfig: every setting of a training run, validated at construction.

The fields and defaults are the seed README's (steps, optimiser, schedule, efficiency,
checkpoints, Hugging Face Hub) plus what a reproducible run needs (``seed``, ``device``,
``precision``, ``compile``, ``eval_iters``, ``keep_last_n``, logging). An unknown field is an
error that suggests the closest name, so ``save_every_n=100`` fails instead of being ignored.

>>> cfg = TrainConfig(max_steps=3000, lr=3e-4, warmup_steps=200)
>>> TrainConfig.from_dict(cfg.to_dict()) == cfg
True
"""

from __future__ import annotations

from typing import Any

from pydantic import model_validator

from ..config_base import StrictConfig, check_choice

PRECISIONS = ("fp32", "bf16", "fp16")
PROGRESS = ("auto", "bar", "lines", "none")
PARALLEL = ("ddp", "fsdp")


class TrainConfig(StrictConfig):
    """Settings of one training run (pretraining or SFT).

    Precision: ``precision`` ("fp32" | "bf16" | "fp16") wins when set. Otherwise
    ``mixed_precision=True`` picks bf16 autocast on a CUDA GPU that supports it (fp16 with a
    GradScaler on older GPUs) and bf16 autocast on a CPU with native bf16 instructions
    (AVX512-BF16 or AMX), fp32 elsewhere. Weights and optimiser state are fp32 in every mode.
    """

    # steps
    max_steps: int = 10000
    # wall-clock seconds of training (steps, evals and saves; resume-aware): the run ends at whichever of
    # max_steps and max_time comes first, with the final eval and checkpoint; the cosine then follows time
    max_time: float | None = None
    eval_every: int = 500
    save_every: int = 1000
    log_every: int = 50
    interruptible: bool = True

    # optimiser (AdamW; weight decay on tensors with >= 2 dims only)
    lr: float = 3e-4
    min_lr: float = 3e-5
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    eps: float = 1e-8
    grad_clip: float = 1.0  # max global grad norm; 0 disables clipping

    # lr schedule: linear warmup to lr, then cosine to min_lr at max_steps
    warmup_steps: int = 200

    # efficiency
    grad_accum_steps: int = 4
    mixed_precision: bool = True
    precision: str | None = None  # "fp32" | "bf16" | "fp16"; overrides mixed_precision
    grad_checkpoint: bool = False
    compile: bool = False  # torch.compile the model (compilation time counts; pays off on long runs)
    reuse_host_memory: bool = True  # CPU on Linux/glibc: keep freed memory for the next step (hostmem.py)
    device: str = "auto"  # "auto" = cuda (this rank's GPU) when available, else cpu; or e.g. "cuda:1"
    parallel: str = "ddp"  # under torchrun: "ddp" (replicate) or "fsdp" (FSDP2 fully_shard)

    # evaluation
    eval_iters: int | None = 100  # val batches per eval; None = the whole val loader
    # tasks scored at eval time (transformer_toolkit.evaluation): names or {"name": ..., options} dicts,
    # built-in ("synthetic", "bpb") or lm-eval tasks; their scores go to metrics.jsonl and loss.png
    eval_tasks: list[str | dict[str, Any]] = []
    eval_tasks_every: int | None = None  # steps between task evals; None = every eval (eval_every)
    max_bad_steps: int = 5  # stop after this many NaN/inf losses in a row

    # checkpoints
    ckpt_dir: str = "checkpoints"
    save_best: bool = True
    save_step_ckpts: bool = True
    keep_last_n: int | None = None  # keep only the newest N step_*.pt; None keeps all

    # reproducibility
    seed: int = 1337

    # logging
    log_dir: str | None = None  # metrics.jsonl, loss.png, TensorBoard events; None = ckpt_dir
    progress: str = "auto"  # "auto" (live bar on a terminal, plain lines otherwise) | "bar" | "lines" | "none"
    tensorboard: bool = False  # needs `pip install transformer-toolkit[tb]`
    plot: bool = True  # loss.png refreshed at every eval (when matplotlib is installed)

    # huggingface hub (uploads run in a background thread)
    hf_repo: str | None = None
    hf_private: bool = True
    hf_push_best: bool = True
    hf_push_every_n: bool | int = False  # True: every save_every steps; an int N: every N steps
    hf_push_end: bool = True
    hf_push_on_pause: bool = True

    RANGES = {**{n: {"ge": 1} for n in ("max_steps", "eval_every", "save_every", "log_every", "grad_accum_steps",
                                         "max_bad_steps")},
              "eval_iters": {"ge": 1, "hint": " or None (the whole val loader)"},
              "eval_tasks_every": {"ge": 1, "hint": " or None (every eval)"},
              "keep_last_n": {"ge": 1, "hint": " or None (keep every step checkpoint)"},
              "warmup_steps": {"ge": 0}, "lr": {"gt": 0}, "min_lr": {"ge": 0}, "weight_decay": {"ge": 0},
              "beta1": {"ge": 0, "lt": 1}, "beta2": {"ge": 0, "lt": 1}, "eps": {"gt": 0},
              "grad_clip": {"ge": 0, "hint": " (0 disables clipping)"}, "seed": {"ge": 0},
              "max_time": {"gt": 0, "hint": " seconds or None (no time limit)"}}

    @model_validator(mode="after")
    def _validate(self) -> TrainConfig:
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr must be in [0, lr={self.lr}], got {self.min_lr}; typically lr / 10")
        if self.precision is not None:
            check_choice("precision", self.precision, PRECISIONS)
        check_choice("progress", self.progress, PROGRESS)
        check_choice("parallel", self.parallel, PARALLEL)
        for t in self.eval_tasks:
            if not (isinstance(t, str) and t.strip()) and not (isinstance(t, dict) and isinstance(t.get("name"), str)):
                raise ValueError(f"eval_tasks entries are task names or dicts with a 'name', got {t!r}")
        if not isinstance(self.hf_push_every_n, bool) and self.hf_push_every_n < 1:
            raise ValueError(f"hf_push_every_n must be True/False or a step count >= 1, got {self.hf_push_every_n}")
        if self.hf_repo is not None and "/" not in self.hf_repo:
            raise ValueError(f"hf_repo must look like 'username/model-name', got {self.hf_repo!r}; "
                             "None disables pushes")
        return self

    @property
    def hub_push_interval(self) -> int | None:
        """Steps between periodic hub pushes, or None when they are off."""
        if self.hf_push_every_n is False:
            return None
        return self.save_every if self.hf_push_every_n is True else int(self.hf_push_every_n)

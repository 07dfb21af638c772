"""Tasks scored during training: ``TrainConfig(eval_tasks=[...], eval_tasks_every=N)``.

The Trainer builds one ``TrainingTasks`` when the run has eval tasks (so a bad task name fails
before the first step) and calls ``run`` at eval time; the scores go to ``metrics.jsonl``,
TensorBoard and the second panel of ``loss.png``, the results to ``eval/tasks_step_N.json/.md``.

Scoring never moves the training run: every random state (Python, NumPy, torch; lm-eval
reseeds all three) is restored afterwards. Under torchrun every rank scores (a sharded FSDP
model needs all ranks in each forward); only rank 0 writes.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from contextlib import contextmanager, nullcontext

import numpy as np
import torch

from .builtin import BUILTIN
from .results import write_results
from .tasks import evaluate_tasks, parse_spec, scores, task_manager

LM_EVAL_OPTIONS = ("limit", "num_fewshot", "include_path")


@contextmanager
def kept_rng():
    """Run the body and put every random generator back as it was."""
    py, npy = random.getstate(), np.random.get_state()
    devices = list(range(torch.cuda.device_count())) if torch.cuda.is_initialized() else []
    try:
        with torch.random.fork_rng(devices=devices):
            yield
    finally:
        random.setstate(py)
        np.random.set_state(npy)


def val_tokens(val_dl) -> Callable[[], np.ndarray] | None:
    """The held-out token stream of a pretraining val loader (a memmap view), for ``bpb``."""
    from ..data.loader import TokenWindows

    dataset = getattr(val_dl, "dataset", None)
    return (lambda: dataset.tokens) if isinstance(dataset, TokenWindows) else None


class TrainingTasks:
    """The eval tasks of a run. ``specs``: names or ``{"name": ..., options}`` dicts; lm-eval
    tasks take ``limit``, ``num_fewshot`` and ``include_path`` options."""

    def __init__(self, specs, tokenizer, val_dl=None):
        if tokenizer is None:
            raise ValueError("TrainConfig(eval_tasks=...) needs the tokenizer: pass Trainer(..., tokenizer=tok)")
        self.specs = [parse_spec(s) for s in specs]
        self.tokenizer, self.heldout = tokenizer, val_tokens(val_dl)
        harness = [(n, o) for n, o in self.specs if n not in BUILTIN]
        for name, options in harness:
            extra = sorted(set(options) - set(LM_EVAL_OPTIONS))
            if extra:
                raise ValueError(f"eval_tasks: {name}: unknown option(s) {', '.join(extra)}; an lm-eval task takes "
                                 f"{', '.join(LM_EVAL_OPTIONS)}")
        by_path: dict[str, list[str]] = {}
        for name, options in harness:
            by_path.setdefault(repr(options.get("include_path")), []).append(name)
        for path_names in by_path.values():  # unknown names fail now, not after the first eval_every steps
            first = next(o for n, o in harness if n == path_names[0])
            task_manager(path_names, first.get("include_path"))

    def run(self, model, step: int, autocast=nullcontext, folder=None) -> dict[str, float]:
        """Score ``model`` now; returns ``{"task/metric": value}`` and, with ``folder``, writes
        the results there as ``tasks_step_<step>.json`` and ``.md``."""
        calls: dict[str, tuple[object, list[dict]]] = {}
        for name, options in self.specs:
            include = options.get("include_path")
            spec = {"name": name, **{k: v for k, v in options.items() if k != "include_path"}}
            calls.setdefault(repr(include), (include, []))[1].append(spec)
        results: dict = {"results": {}}
        with kept_rng(), autocast():
            for include, specs in calls.values():  # one lm-eval call per include path
                one = evaluate_tasks(model, self.tokenizer, specs, heldout=self.heldout, include_path=include)
                for key, value in one.items():
                    if isinstance(value, dict):
                        results.setdefault(key, {}).update(value)
                    else:
                        results.setdefault(key, value)
        if folder is not None:
            write_results(results, folder, stem=f"tasks_step_{step}")
        return scores(results)

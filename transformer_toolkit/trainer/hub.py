"""Hugging Face Hub pushes from a background thread, so an upload never stalls training.

Each push gets a CPU snapshot of the model taken at that step (training keeps changing the
live weights while the upload runs). Pushes run one at a time, in order; a failed push is a
warning, never a crash. ``close()`` waits for the queue to drain (end of ``train()``).

The uploader is ``transformer_toolkit.hf_hub.push_to_hub`` unless one is injected (tests, or a
custom destination): any callable accepting the keywords
``repo_id, model, cfg, tokenizer, metrics, step, private``.
"""

from __future__ import annotations

import copy
import queue
import threading
import warnings
from collections.abc import Callable

import torch
import torch.nn as nn


def default_uploader() -> Callable:
    try:
        from ..hf_hub import push_to_hub
    except ImportError as e:
        raise ImportError(f"hf_repo is set but the hub uploader cannot be imported ({e}); install the extra with "
                          "pip install 'transformer-toolkit[hf]', or set hf_repo=None") from e
    return push_to_hub


def cpu_snapshot(model: nn.Module) -> nn.Module:
    """A CPU copy of ``model`` in eval mode (tied weights stay tied: deepcopy keeps sharing)."""
    with torch.no_grad():
        snap = copy.deepcopy(model).to("cpu")
    return snap.eval()


class HubWorker:
    def __init__(self, uploader: Callable, repo_id: str, private: bool, tokenizer=None):
        self.uploader, self.repo_id, self.private, self.tokenizer = uploader, repo_id, private, tokenizer
        self.queue: queue.Queue = queue.Queue()
        self.failures: list[str] = []
        self.done: list[tuple[str, int]] = []  # (reason, step) of every finished push
        self._thread = threading.Thread(target=self._run, name="hf-hub-upload", daemon=True)
        self._thread.start()

    def push(self, snapshot: nn.Module, step: int, metrics: dict, reason: str) -> None:
        """Queue a push of ``snapshot`` (a CPU copy, see ``cpu_snapshot``); returns at once."""
        self.queue.put((snapshot, step, dict(metrics), reason))

    def _run(self) -> None:
        while True:
            item = self.queue.get()
            if item is None:
                self.queue.task_done()
                return
            model, step, metrics, reason = item
            try:
                self.uploader(repo_id=self.repo_id, model=model, cfg=getattr(model, "cfg", None),
                              tokenizer=self.tokenizer, metrics=metrics, step=step, private=self.private)
                self.done.append((reason, step))
            except Exception as e:  # an upload problem must never end a training run
                msg = f"hub push ({reason}, step {step}) to {self.repo_id} failed: {type(e).__name__}: {e}"
                self.failures.append(msg)
                warnings.warn(msg + "; training continues", RuntimeWarning, stacklevel=1)
            finally:
                self.queue.task_done()

    def wait(self) -> None:
        """Block until every queued push has finished."""
        self.queue.join()

    def close(self, wait: bool = True) -> None:
        """Stop the worker after the queued pushes; ``wait=False`` returns at once (the daemon
        thread finishes what it can while the process lives)."""
        self.queue.put(None)
        if wait:
            self._thread.join()

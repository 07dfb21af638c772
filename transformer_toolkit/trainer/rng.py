"""Every RNG a training step can touch, saved in each checkpoint and restored on resume, so a
resumed run draws exactly the numbers the straight run would have drawn.

The states are tensors, numbers and plain lists, so a checkpoint holding them still loads with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import random
import warnings

import numpy as np
import torch


def rng_state() -> dict:
    """The torch, CUDA, numpy and Python RNG states (weights_only-safe)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, py_state, py_gauss = random.getstate()
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": {"version": version, "state": list(py_state), "gauss": py_gauss},
    }


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if state.get("cuda") and torch.cuda.is_available():
        if len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        else:
            warnings.warn("the checkpoint's CUDA RNG states are for another number of GPUs; not restored",
                          stacklevel=2)
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))

"""The checkpoint format: written atomically, read with ``weights_only=True``, the newest found.

A checkpoint is one ``torch.save``'d dict (``save_checkpoint`` writes it, the Trainer fills it)::

    format, version     "transformer_toolkit.checkpoint", 1
    kind                "step" | "best" | "pause"
    model               the full model state dict (``model.load_state_dict(ckpt["model"])`` works)
    optimizer, scaler   optimizer state dict; GradScaler state dict or None
    step                optimizer steps completed
    elapsed             seconds spent training (the clock of ``max_time``)
    best_val_loss       best validation loss so far (inf before the first eval)
    val_loss            the latest validation loss, or None
    model_config        the model's TransformerConfig as a plain dict (None for other modules)
    train_config        the TrainConfig as a plain dict
    data_config         the loaders' settings as a plain dict, or None (``Trainer(data_config=...)``)
    rng                 one entry per rank: torch / cuda / numpy / python RNG states (trainer/rng.py)
    data                one entry per rank: the train loader position (trainer/batches.py)
    world_size, torch_version
    frozen              None, or for a model with frozen parameters (LoRA) a fingerprint of
                        them; ``model`` then holds the trainable parameters only
    adapter             None, or the model's ``adapter_info`` (LoRA config, base weights' source)
    extra               a Trainer subclass's own state (e.g. DPO's reference log-probs)

Everything is tensors, numbers, strings, lists and dicts, so ``torch.load(path, weights_only=True)``
(the default since PyTorch 2.6) reads it and nothing is ever unpickled.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
from pathlib import Path

import torch
import torch.nn as nn

from ..atomic import temp_path_for
from ..model.config import TransformerConfig
from ..model.loading import empty_transformer

FORMAT, VERSION = "transformer_toolkit.checkpoint", 1
STEP_RE = re.compile(r"^step_(\d+)\.pt$")


def atomic_save(obj, path: str | os.PathLike) -> None:
    """``torch.save`` to a temp file of its own next to ``path``, fsync, then ``os.replace``: a
    crash mid-write leaves the previous file at ``path`` intact and removes the partial temp
    file, and two concurrent saves of one path each install a complete file (the later rename
    wins) instead of mixing their tensors in one shared temp file."""
    path = Path(path)
    tmp = Path(temp_path_for(path))
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e.__context__, KeyboardInterrupt) and not isinstance(e, KeyboardInterrupt):
            # Ctrl+C inside torch.save resurfaces as the zip writer's RuntimeError: say what happened
            raise KeyboardInterrupt(f"interrupted while writing {path}; the previous file is intact") from None
        raise


def save_checkpoint(path: str | os.PathLike, *, kind: str, model: dict, **fields) -> Path:
    """Write a checkpoint (``kind`` "step" | "best" | "pause", ``model`` the state dict, ``fields``
    the rest of the entries listed above) atomically, stamped with the format, version and torch
    version. Returns the path."""
    atomic_save({"format": FORMAT, "version": VERSION, "kind": kind, "model": model, **fields,
                 "torch_version": str(torch.__version__)}, path)
    return Path(path)


# loading --------------------------------------------------------------------------------------
def read_ckpt(path: str | os.PathLike, map_location="cpu", mmap: bool = False) -> dict:
    """``torch.load(path, weights_only=True)`` with a clear error for a missing file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"no checkpoint at {os.fspath(path)!r}; check the path or use resume_from='auto'")
    try:
        return torch.load(path, map_location=map_location, weights_only=True, mmap=mmap)
    except pickle.UnpicklingError as e:
        # torch's message advises weights_only=False, i.e. running the file's code: never say that
        raise ValueError(f"{os.fspath(path)} is not a trusted checkpoint: it holds Python objects other than "
                         f"tensors, numbers and strings ({_unpickling_reason(e)}), and loading them could run "
                         "code, so it was not loaded. Checkpoints written by transformer-toolkit, or plain "
                         "tensor state dicts, load") from None
    except (RuntimeError, EOFError) as e:  # a cut-short zip: "failed finding central directory" and kin
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise ValueError(f"{os.fspath(path)} is not a readable checkpoint (truncated or damaged: {first}); "
                         "use another checkpoint of the run") from None


def _unpickling_reason(e: Exception) -> str:
    """The line of torch's refusal that names what the file asked for (not its advice)."""
    lines = [s.strip() for s in str(e).splitlines() if s.strip()]
    named = [s for s in lines if "GLOBAL" in s or "Unsupported" in s or "unsupported" in s]
    reason = (named or lines[-1:] or ["unsupported content"])[0]
    return reason if "weights_only" not in reason else "unsupported content"


# Fields that change no weight and no computation that matters for loading (dropout is 0.0 at
# inference by design, so a training checkpoint is routinely loaded into a dropout-free model).
BENIGN_FIELDS = ("dropout",)


def config_diff(ckpt: dict, model: nn.Module) -> dict[str, tuple]:
    """``{field: (checkpoint value, model value)}`` where the saved model config differs."""
    saved, cfg = ckpt.get("model_config"), getattr(model, "cfg", None)
    if not saved or cfg is None or not hasattr(cfg, "to_dict"):
        return {}
    saved, now = _as_recorded(saved, cfg), cfg.to_dict()
    return {k: (saved.get(k), now.get(k)) for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)}


def fingerprint(tensors) -> torch.Tensor:
    """``(n, 2)`` float64: each tensor's sum and sum of squares. Equal weights give equal values;
    any other weights almost surely do not (a check, not a hash: it costs one pass over them)."""
    rows = []
    with torch.no_grad():
        for t in tensors:
            t = t.full_tensor() if hasattr(t, "full_tensor") else t
            d = t.detach().double()
            rows.append(torch.stack([d.sum(), (d * d).sum()]).cpu())
    return torch.stack(rows) if rows else torch.zeros(0, 2, dtype=torch.float64)


def _as_recorded(saved: dict, cfg) -> dict:
    """The saved config as ``cfg``'s class records it today: an older checkpoint may hold a value
    for a field its variant ignores (``latent_dim`` of an mha model), which changes no weight.
    The dict as saved when it no longer validates."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return type(cfg).from_dict(saved).to_dict()
    except (ValueError, TypeError):
        return saved


def load_model_state(ckpt: dict, model: nn.Module, path, strict: bool = True) -> None:
    """``model.load_state_dict(ckpt["model"])``; a mismatch names the differing config fields.
    ``strict=False``: a partial checkpoint (trainable parameters only; checked by the caller)."""
    diff = config_diff(ckpt, model)
    fields = ", ".join(f"{k}: checkpoint {a!r} vs model {b!r}" for k, (a, b) in diff.items())
    try:
        model.load_state_dict(ckpt["model"], strict=strict)
    except RuntimeError as e:
        hint = f" The configs differ ({fields}); build the model with TransformerConfig(**ckpt['model_config'])." \
            if diff else ""
        raise ValueError(f"{os.fspath(path)} does not fit this model.{hint}\n{e}") from None
    if any(k not in BENIGN_FIELDS for k in diff):
        warnings.warn(f"{os.fspath(path)} was saved from a different model config ({fields}); "
                      "the weights loaded, but check that this is intended", stacklevel=3)


def load_ckpt(path: str | os.PathLike, model: nn.Module, optimizer: torch.optim.Optimizer | None = None,
              map_location="cpu") -> dict:
    """Load a checkpoint's weights into ``model`` (and its state into ``optimizer`` if given);
    return the whole checkpoint dict (``step``, ``best_val_loss``, configs, ...).

    >>> load_ckpt("checkpoints/best.pt", model)  # doctest: +SKIP
    """
    ckpt = read_ckpt(path, map_location=map_location)
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise ValueError(f"{os.fspath(path)} is not a training checkpoint (no 'model' entry)")
    load_model_state(ckpt, model, path)
    if optimizer is not None:
        if ckpt.get("optimizer") is None:
            raise ValueError(f"{os.fspath(path)} holds no optimizer state; call load_ckpt without optimizer")
        optimizer.load_state_dict(ckpt["optimizer"])
    return ckpt


def load_checkpoint_model(path: str | os.PathLike, map_location="cpu"):
    """The ``Transformer`` a checkpoint file holds, built from its ``model_config`` with every
    weight loaded, in eval mode."""
    # to the CPU memory-mapped: only the weights' pages are read, never the optimiser state
    # (twice the model again for AdamW): 1.07 -> 0.18 s and half the peak memory for 517 MB
    on_cpu = isinstance(map_location, (str, torch.device)) and torch.device(map_location).type == "cpu"
    ckpt = read_ckpt(path, map_location=map_location, mmap=on_cpu)
    if ckpt.get("frozen") is not None:
        raise ValueError(f"{path} holds trainable parameters only (LoRA adapters); load it with "
                         "transformer_toolkit.store.load(path), which puts them on their base model")
    if not ckpt.get("model_config"):
        raise ValueError(f"{path} has no 'model_config'; build the model yourself and use load_ckpt")
    model = empty_transformer(TransformerConfig.from_dict(ckpt["model_config"]))
    load_model_state(ckpt, model, path)  # strict: every weight is loaded
    return model.eval()


# the checkpoint folder ------------------------------------------------------------------------
def step_ckpts(ckpt_dir: str | os.PathLike) -> list[tuple[int, Path]]:
    """``(N, path)`` of every ``step_N.pt`` in ``ckpt_dir``, oldest first."""
    d = Path(ckpt_dir)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := STEP_RE.match(p.name))]
    return sorted(found)


def latest_ckpt(ckpt_dir: str | os.PathLike) -> Path | None:
    """The newest resumable checkpoint (``pause.pt`` or ``step_N.pt``) by the step stored inside;
    unreadable files are skipped with a warning. ``best.pt`` is not a resume point: it is an
    older state whenever validation got worse later."""
    candidates = [p for _, p in step_ckpts(ckpt_dir)]
    pause = Path(ckpt_dir) / "pause.pt"
    if pause.is_file():
        candidates.append(pause)
    best, best_step = None, -1
    for p in candidates:
        try:
            step = int(read_ckpt(p, mmap=True)["step"])  # mmap: reads the small header, not the weights
        except Exception as e:  # a foreign or damaged file must not block resuming from the others
            warnings.warn(f"skipping unreadable checkpoint {p}: {e}", stacklevel=2)
            continue
        if step >= best_step:  # on a tie the later candidate (pause.pt) wins: it is the newer write
            best, best_step = p, step
    return best


def prune_step_ckpts(ckpt_dir: str | os.PathLike, keep_last_n: int | None, upto_step: int | None = None) -> None:
    """Delete all but the newest ``keep_last_n`` ``step_N.pt`` files with ``N <= upto_step``
    (all when None); best.pt, pause.pt and later steps stay."""
    if keep_last_n is None:
        return
    mine = [p for n, p in step_ckpts(ckpt_dir) if upto_step is None or n <= upto_step]
    for p in mine[:-keep_last_n]:
        p.unlink(missing_ok=True)


def set_aside_later(ckpt_dir: str | os.PathLike, step: int) -> list[Path]:
    """Move the checkpoints of ``ckpt_dir`` saved after ``step`` (step_N.pt with N > step; best.pt
    and pause.pt holding a later step) into ``ckpt_dir/abandoned/after_step_<step>[_k]/``;
    returns their new paths. Used when a run resumes from an earlier checkpoint: what came after
    it is another trajectory, kept but out of the way."""
    d = Path(ckpt_dir)
    later = [p for n, p in step_ckpts(d) if n > step]
    for name in ("best.pt", "pause.pt"):
        p = d / name
        try:
            if p.is_file() and int(read_ckpt(p, mmap=True)["step"]) > step:
                later.append(p)
        except Exception as e:  # a damaged file is left where it is
            warnings.warn(f"leaving unreadable checkpoint {p} in place: {e}", stacklevel=2)
    if not later:
        return []
    dest, k = d / "abandoned" / f"after_step_{step}", 1
    while dest.exists():
        k += 1
        dest = d / "abandoned" / f"after_step_{step}_{k}"
    dest.mkdir(parents=True)
    moved = []
    for p in later:
        os.replace(p, dest / p.name)
        moved.append(dest / p.name)
    return moved

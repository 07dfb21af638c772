"""The run folder of ``ttk train``, ``ttk sft`` and ``ttk dpo``: which config a run uses, the lock
that keeps a second process out, and the derived files it may reuse.

- Config: a fresh run starts from ``--config`` (or the command's recipe); a rerun on a folder
  that holds a ``config.yaml`` starts from that file, so ``ttk train --out RUN --train.max_steps
  2000`` extends RUN with its own settings (an SFT run keeps its data and template) and only the
  overrides change. ``config.yaml`` is written once training starts (``Trainer.train``'s
  ``on_start``): a start that fails leaves the old one as it was.
- Lock: ``runs.locked`` for the whole command.
- Derived files (``tokenizer.json``, ``data/tokens.bin``) are reused only when ``made_from.json``
  says they were made from the inputs asked for now; otherwise they are made again, except a
  tokenizer that the run's checkpoints depend on, which is refused with the fix.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..model import TransformerConfig
from ..store import runs
from ..store.checkpoint import latest_ckpt
from . import config as C

# TransformerConfig fields that validation derives when they are None (see its docstring)
DERIVED = ("head_dim", "n_kv_heads", "hidden_dim", "moe_hidden_dim", "moe_n_routed", "rope_head_dim")


@contextmanager
def open_run(args, overrides: dict, kind: str, recipe: str,
             check: Callable[[dict], None] | None = None) -> Iterator[tuple[dict, dict, Path]]:
    """Lock the run folder and yield ``(run, raw, out)``: the resolved config and the raw one it
    was resolved from (see the module docstring for its base; ``--init``/``--model`` set init).
    ``check(raw)`` may refuse the raw config before it is validated."""
    init = [a for a in (getattr(args, "init", None), getattr(args, "model", None)) if a]
    if len(init) > 1:
        raise ValueError("give --init or --model, not both (they mean the same)")
    raw = C.merge(C.read_yaml(args.config or recipe), overrides)
    out = Path(args.out or os.path.join("runs", str(args.name or raw.get("name") or recipe)))
    with runs.locked(out):
        saved = {} if args.config else runs.read_config(out)  # --config replaces even a damaged one
        if saved:
            raw = C.merge(as_base(saved, kind), overrides)
        if args.name:
            raw["name"] = args.name
        if init:
            raw["init"] = init[0]
        if check is not None:
            check(raw)
        yield C.resolve(raw, kind), raw, out


def as_base(saved: dict, kind: str = "train") -> dict:
    """A run's resolved config.yaml as the raw config of a rerun: the derived model fields that
    still hold their derived value are dropped (so ``--model.dim`` before the first checkpoint
    derives them again), and the folder paths, which the run folder sets, too. A DPO or GRPO run
    tunes its init as it is: its model section is dropped."""
    if kind in ("dpo", "grpo"):
        saved = {k: v for k, v in saved.items() if k != "model"}
    model = dict(saved.get("model") or {})
    for name in DERIVED:
        if name not in model:
            continue
        trial = {k: v for k, v in model.items() if k != name}
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                derived = TransformerConfig(**trial).to_dict()[name]
        except (ValueError, TypeError):
            continue
        if derived == model[name]:
            model = trial
    train = {k: v for k, v in (saved.get("train") or {}).items() if k not in ("ckpt_dir", "log_dir")}
    return {**saved, **({"model": model} if model else {}), "train": train, "data": dict(saved.get("data") or {})}


def resume_target(args, ckpt_dir: Path):
    """None (fresh), "auto" or a checkpoint path, from ``--resume``."""
    has_ckpt = latest_ckpt(ckpt_dir) is not None
    if args.resume == "none":
        if has_ckpt:
            raise ValueError(f"{ckpt_dir.parent} already holds checkpoints; use --resume auto to continue it, "
                             "or another --out")
        return None
    if args.resume == "auto":
        return "auto" if has_ckpt else None
    if not os.path.isfile(args.resume):
        raise FileNotFoundError(f"--resume {args.resume!r}: no such checkpoint")
    return args.resume


def train_config(run: dict, out: Path):
    """TrainConfig with checkpoints in out/checkpoints and logs in out."""
    return C.build(type(run["train"]), "train",
                   {**run["train"].to_dict(), "ckpt_dir": str(runs.checkpoint_dir(out)), "log_dir": str(out)})


def config_writer(run: dict, out: Path, model_cfg, train_cfg):
    """The ``on_start`` of the run: writes its resolved config.yaml."""
    return lambda: runs.write_config(C.resolved_dict(run, model_cfg, train_cfg), out)


def data_settings(run: dict) -> dict:
    """What the loaders were built from (``Trainer(data_config=...)``), as config.yaml has it."""
    return json.loads(json.dumps({**run["extras"], **run["data"].to_dict()}, default=str))


# derived files ------------------------------------------------------------------------------
def files_record(paths: list[str]) -> dict:
    """Which text files, by path, size and modification time (a digest: a corpus may be thousands)."""
    h = hashlib.sha256()
    for p in paths:
        st = os.stat(p)
        h.update(f"{os.path.abspath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return {"files": len(paths), "digest": h.hexdigest()[:16]}


def input_digest(path: str | os.PathLike) -> str:
    """A short digest of a file's bytes (of a folder's listing: names, sizes, times)."""
    h = hashlib.sha256()
    if os.path.isdir(path):
        return files_record(sorted(str(p) for p in Path(path).iterdir() if p.is_file()))["digest"]
    if not os.path.isfile(path):
        return "missing"  # the loader that reads it says what is wrong
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def reusable(out: Path, name: str, wanted: dict, resuming: bool) -> bool:
    """Whether ``out/name`` exists and was made from ``wanted``. A file without a record (an
    older run folder) is trusted while the run has checkpoints. A tokenizer made from other
    inputs cannot be replaced under checkpoints trained with it: that is an error, unless the
    tokenizer asked for (``wanted["tokenizer"]``, a file) is that very file."""
    path = out / name
    if not path.is_file():
        return False
    had = runs.made_from(out, name)
    if had == wanted or (had is None and resuming):
        return True
    if name == runs.TOKENIZER and "tokenizer" in wanted and wanted.get("digest") == input_digest(path):
        runs.record_made_from(out, name, wanted)
        return True
    what = ", ".join(f"{k} {had.get(k)!r} -> {v!r}" for k, v in wanted.items() if had.get(k) != v) if had else \
        "not recorded"
    if resuming and name == runs.TOKENIZER:
        raise ValueError(f"{out / name} was made from other inputs ({what}) and this run's checkpoints were trained "
                         f"with it; to go on with it, add --data.tokenizer {out / name}; or keep the data settings it "
                         "was made with, or start a new run with another --out")
    print(f"{name}: made from other inputs than asked now ({what}); making it again")
    return False

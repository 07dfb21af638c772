"""Where ``ttk tokenizer``, ``ttk prepare`` and ``ttk export`` write, checked before any work: an
output is never one of the command's inputs, a file never goes where a folder is (nor the
reverse), and an existing output of another kind (``ttk prepare c.txt --out notes.txt``) is
replaced only with ``--force``. Writing itself is atomic (atomic.py), so a failed command leaves
an existing output as it was.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable
from pathlib import Path

from ..data.tokens import MAGIC, NPY_MAGIC


def check_output(out: str | os.PathLike, inputs: Iterable, what: str, *, folder: bool = False,
                 looks_like: Callable[[Path], bool] | None = None, force: bool = False) -> None:
    """Refuse ``out`` (with the fix) when it is one of ``inputs``, when it is a file and ``what``
    is a folder (``folder=True``) or the reverse, or when it exists, is not ``what``
    (``looks_like`` is False) and ``force`` is not given."""
    p = Path(out)
    for i in inputs:
        if p.exists() and os.path.exists(i) and os.path.samefile(p, i):
            raise ValueError(f"--out {os.fspath(out)} is also an input of this command; writing it would replace "
                             "what is being read: choose another --out")
    parent = p.absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ValueError(f"--out {os.fspath(out)}: {parent} is a file, not a folder; choose another --out")
    if folder and p.exists() and not p.is_dir():
        raise ValueError(f"--out {os.fspath(out)} is a file, and {what} is a folder; give a folder path")
    if not folder and p.is_dir():
        raise ValueError(f"--out {os.fspath(out)} is a folder, and {what} is a file; give a file path such as "
                         f"{os.fspath(p / 'NAME')}")
    if p.exists() and looks_like is not None and not force and not looks_like(p):
        raise ValueError(f"--out {os.fspath(out)} exists and is not {what}; add --force to replace it, or choose "
                         "another --out")


def _starts_with(*magics: bytes) -> Callable[[Path], bool]:
    def check(p: Path) -> bool:
        with open(p, "rb") as f:
            head = f.read(max(map(len, magics)))
        return any(head.startswith(m) for m in magics)
    return check


is_token_file = _starts_with(MAGIC, NPY_MAGIC)
is_npy = _starts_with(NPY_MAGIC)
is_gguf = _starts_with(b"GGUF")


def is_tokenizer_json(p: Path) -> bool:
    """A tokenizers-library ``tokenizer.json``: a JSON object with a ``model`` entry."""
    try:
        with open(p, encoding="utf-8") as f:
            data = json.load(f)
    except (ValueError, UnicodeDecodeError):
        return False
    return isinstance(data, dict) and "model" in data


def is_model_folder(p: Path) -> bool:
    """An empty folder, or one that already holds a model or adapter (its config.json or
    adapter_config.json): what an export may write into (it replaces those files, not others)."""
    return not any(p.iterdir()) or (p / "config.json").is_file() or (p / "adapter_config.json").is_file()

"""Built-in corpora, so ``ttk train`` and ``ttk sft`` run with no download and no arguments.

``builtin:python-stdlib``: the .py files of the running interpreter's standard library
(site-packages and test folders skipped, files that are not UTF-8 skipped), in sorted order and
capped at ``max_mb``, so the corpus is the same on every run with the same Python.
``builtin:synthetic``: the checkable reverse/add conversations of ``sft.synthetic``.
"""

from __future__ import annotations

import os
import sysconfig

SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__", "lib2to3"}


def stdlib_files(max_mb: float = 12.0) -> list[str]:
    """Sorted stdlib .py paths whose total size stays under ``max_mb`` megabytes."""
    root = sysconfig.get_paths()["stdlib"]
    budget, out = int(max_mb * 1e6), []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in SKIP_DIRS and not d.startswith("."))
        for f in sorted(filenames):
            if not f.endswith(".py"):
                continue
            path = os.path.join(dirpath, f)
            size = os.path.getsize(path)
            if size == 0 or size > budget:
                continue
            try:
                with open(path, encoding="utf-8") as fh:
                    fh.read()
            except (UnicodeDecodeError, OSError):
                continue
            out.append(path)
            budget -= size
            if budget <= 0:
                return out
    if not out:
        raise FileNotFoundError(f"no Python source files found under {root}")
    return out


def corpus_files(corpus, max_mb: float) -> list[str]:
    """Text file paths for ``data.corpus``: ``builtin:python-stdlib``, one path or a list of paths."""
    if corpus == "builtin:python-stdlib":
        return stdlib_files(max_mb)
    if isinstance(corpus, str) and corpus.startswith("builtin:"):
        raise ValueError(f"data.corpus={corpus!r} is not a built-in pretraining corpus; use builtin:python-stdlib")
    paths = [corpus] if isinstance(corpus, (str, os.PathLike)) else list(corpus or [])
    if not paths:
        raise ValueError("data.corpus is empty; give a text file, a list of files or builtin:python-stdlib")
    for p in paths:
        if not os.path.isfile(p):
            raise FileNotFoundError(f"data.corpus file {os.fspath(p)!r} does not exist")
    return [os.fspath(p) for p in paths]


def read_texts(paths: list[str]):
    """Each file's text, one at a time (for tokenizer training)."""
    for p in paths:
        with open(p, encoding="utf-8", errors="replace") as f:
            yield f.read()


def synthetic_split(n: int, n_eval: int, tasks, seed: int = 0,
                    multi_turn: float = 0.0) -> tuple[list[dict], list[dict]]:
    """(train, held-out) conversations; no held-out prompt appears anywhere in training. The
    held-out ones are single questions (scored by exact match)."""
    from ..sft.synthetic import synthetic_tasks, user_prompts

    tasks = tuple(tasks)
    train = synthetic_tasks(n, seed=seed, tasks=tasks, multi_turn=multi_turn)
    return train, synthetic_tasks(n_eval, seed=seed + 1, tasks=tasks, exclude=user_prompts(train))

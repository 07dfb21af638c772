"""Atomic file writes: a temp file next to the target, then a rename, so a crash never leaves
half a file where a complete one was (the rename is atomic on one filesystem)."""

from __future__ import annotations

import os
import uuid


def temp_path_for(path: str | os.PathLike, folder_mode: int = 0o777) -> str:
    """A fresh hidden name next to ``path`` (same filesystem, so ``os.replace`` is atomic); the
    folder is created (with ``folder_mode``, less the umask) when missing.

    Not ``mkstemp``: its files are mode 0600, and a final file should get the usual umask mode."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, mode=folder_mode, exist_ok=True)
    return os.path.join(folder, f".{os.path.basename(path)}.{uuid.uuid4().hex[:12]}.tmp")


def atomic_write_text(path: str | os.PathLike, text: str, private: bool = False) -> None:
    """Write ``text`` to ``path`` through a temp file and a rename, so a crash never leaves half a file.

    The file gets the usual mode (0666 less the umask); ``private=True`` makes it owner-only
    (0600) and creates a missing folder as 0700, for secrets such as an access token."""
    path = os.fspath(path)
    tmp = temp_path_for(path, 0o700 if private else 0o777)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600 if private else 0o666)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise

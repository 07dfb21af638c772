"""Atomic file writes: a temp file next to the target, then a rename, so a crash never leaves
half a file where a complete one was (the rename is atomic on one filesystem). Every write gets
its own temp name, so two writers of one path never write into the same temp file (each rename
then installs one writer's complete file). ``exclusive_lock`` keeps a second process out of a
folder that one is writing (a run folder)."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

try:
    import fcntl  # POSIX; Windows has none, and there the lock is skipped
except ImportError:  # pragma: no cover - not on the platforms we test
    fcntl = None


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


class LockedError(ValueError):
    """Another process holds the lock (a ValueError, so ``ttk`` reports it in one line)."""


@contextmanager
def exclusive_lock(path: str | os.PathLike, what: str) -> Iterator[None]:
    """Hold an exclusive OS lock on the file ``path`` (created when missing) for the block, or
    raise ``LockedError`` at once naming ``what`` and the holder's pid.

    ``fcntl.flock``: the kernel drops the lock when its holder exits, however it dies (kill -9
    included), so a stale lock file never blocks a later run; the file itself is left in place.
    Without ``fcntl`` (Windows) nothing is locked."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                raise LockedError(f"{what} is in use by another process{f' (pid {holder})' if holder else ''}; "
                                  "wait for it to finish, or choose another output") from None
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock

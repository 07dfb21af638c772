"""Graceful stop: the first SIGINT (Ctrl+C) or SIGTERM asks the loop to stop after the current
step (it then saves ``pause.pt``); a second one aborts at once with ``KeyboardInterrupt``, except
while a checkpoint is being written (``deferred``): then the abort waits for the file to be
complete, since an exception inside ``torch.save`` surfaces as a RuntimeError about the zip
writer instead (a traceback). A third signal aborts even then.

Handlers are installed only for the duration of ``train()`` and only from the main thread
(Python delivers signals there); the previous handlers are restored afterwards.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class StopSignals:
    def __init__(self, enabled: bool, on_first: Callable[[str], None] | None = None):
        self.enabled = enabled and threading.current_thread() is threading.main_thread()
        self.on_first = on_first
        self.requested = False
        self._previous: dict = {}
        self._deferring, self._abort = False, None

    def _handle(self, signum, frame) -> None:
        name = signal.Signals(signum).name
        if self.requested and self._deferring and self._abort is None:
            self._abort = f"second {name}: training aborted once the checkpoint being written was complete"
            return
        if self.requested:
            self._restore()
            raise KeyboardInterrupt(f"second {name}: training aborted without saving")
        self.requested = True
        if self.on_first is not None:
            self.on_first(name)

    @contextmanager
    def deferred(self) -> Iterator[None]:
        """A block (a checkpoint being written) that a second signal does not cut short: the
        ``KeyboardInterrupt`` is raised when the block ends."""
        self._deferring = True
        try:
            yield
        finally:
            self._deferring = False
        if self._abort is not None:
            self._restore()
            raise KeyboardInterrupt(self._abort)

    def _restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous = {}

    def __enter__(self) -> StopSignals:
        if self.enabled:
            for sig in SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        self._restore()
